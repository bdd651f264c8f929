"""ClientApps a node runs: the built-in one, and apps its owner approved by name and digest.

A node never runs code from the buyer or the coordinator. Besides the
built-in ClientApp (`fedtrust.training.clientapp`, for the registry models),
it runs only the apps listed in its NODE.toml::

    [[clientapps]]
    name = "loans-flower"                        # what contracts and jobs call it
    target = "flower_loans.client_app:app"       # module:attribute, a flwr.clientapp.ClientApp
    digest = "<digest of the flower_loans package>"   # `fedtrust node digest path/to/flower_loans`

What is pinned is the whole *package* the target lives in (the top-level
package directory: `client_app.py`, `task.py` and every other file in it,
`__pycache__` excepted), or the module file itself for a single-file
top-level module. `app_digest(path)` is that digest: sha256 over each file's
relative path and sha256, in sorted order. The package is located on
`sys.path` *without importing it*, hashed, and compared with the approved
digest when the node starts (a mismatch stops the node, like a data file
that does not match its commitment). When a job first needs the app, every
file is read again into memory, the snapshot hashed again, and the package's
modules are then imported from exactly those bytes (an import hook serves the
package's names from the snapshot only, so a file changed or added on disk
afterwards is never executed). Packages the app imports from outside its own
package are ordinary installed packages and are not pinned.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.util
import logging
import sys
import threading
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from fedtrust.config import ClientAppConfig
from fedtrust.errors import ConfigError, PolicyViolation

log = logging.getLogger(__name__)

__all__ = ["AppRegistry", "BUILTIN", "app_digest"]

BUILTIN = "fedtrust.builtin"


@dataclass(frozen=True)
class ApprovedApp:
    name: str
    module: str
    attribute: str
    digest: str
    source: Path  # the top-level package directory, or the module file of a single-file app


def _locate(module: str) -> Path:
    """The top-level package directory (or single module file) of `module` on sys.path, found without executing code."""
    parts = module.split(".")
    for entry in sys.path:
        base = Path(entry or ".")
        if len(parts) == 1 and base.joinpath(parts[0] + ".py").is_file():
            return base.joinpath(parts[0] + ".py").resolve()
        package = base / parts[0]
        if (package / "__init__.py").is_file():
            target = package.joinpath(*parts[1:])
            if len(parts) == 1 or target.with_suffix(".py").is_file() or (target / "__init__.py").is_file():
                return package.resolve()
    raise ConfigError(f"ClientApp module {module} is not on this node's Python path; install it or fix `target`")


def _files(root: Path) -> dict[str, bytes]:
    """Relative POSIX path -> bytes of every regular file of an app (a package directory, or one module file)."""
    if root.is_file():
        return {root.name: root.read_bytes()}
    out: dict[str, bytes] = {}
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if "__pycache__" in rel.parts or f.suffix == ".pyc" or not f.is_file():
            continue
        out[rel.as_posix()] = f.read_bytes()
    return out


def _tree_digest(files: dict[str, bytes], single: bool) -> str:
    if single:  # a single-file app: the sha256 of the file, as `sha256sum` prints it
        (data,) = files.values()
        return hashlib.sha256(data).hexdigest()
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode("utf-8") + b"\0" + hashlib.sha256(files[rel]).digest())
    return h.hexdigest()


def app_digest(path: str | Path) -> str:
    """The digest a node owner approves: of a package directory (all files but `__pycache__`), or of one module file."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p} does not exist; pass the ClientApp's package directory or module file")
    return _tree_digest(_files(p), p.is_file())


class _Snapshot(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves one package's modules from the bytes that were hashed, and nothing else under its name."""

    def __init__(self, package: str, root: Path, files: dict[str, bytes]) -> None:
        self.package, self.root, self.files = package, root, files

    def find_spec(self, fullname: str, path: Sequence[str] | None = None, target: Any = None):
        if fullname != self.package and not fullname.startswith(self.package + "."):
            return None
        parts = fullname.split(".")[1:]
        init, mod = "/".join([*parts, "__init__.py"]), "/".join(parts) + ".py"
        rel = init if init in self.files else mod if parts and mod in self.files else None
        if rel is None:
            return None  # not in the approved snapshot: ModuleNotFoundError, never a file from disk
        spec = importlib.util.spec_from_loader(fullname, self, origin=str(self.root / rel), is_package=rel == init)
        if spec is not None and rel == init:
            spec.submodule_search_locations = []  # submodules come from this finder only
        return spec

    def create_module(self, spec):  # noqa: D102 - default module creation
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        spec = module.__spec__
        if spec is None or spec.origin is None:
            raise ImportError(f"{module.__name__} is not in the approved package's snapshot")
        origin = spec.origin
        rel = Path(origin).relative_to(self.root).as_posix()
        module.__file__ = origin
        exec(compile(self.files[rel], origin, "exec"), module.__dict__)  # noqa: S102 - approved, pinned code


class AppRegistry:
    """Verified at construction; each app is loaded once, from the bytes that were hashed."""

    def __init__(self, approved: tuple[ClientAppConfig, ...]) -> None:
        self._apps: dict[str, ApprovedApp] = {}
        self._loaded: dict[str, Any] = {}
        self._lock = threading.Lock()
        for cfg in approved:
            module, _, attribute = cfg.target.partition(":")
            src = _locate(module)
            actual = app_digest(src)
            if actual != cfg.digest:
                raise ConfigError(
                    f"[[clientapps]] {cfg.name}: {src} does not match its approved digest (it hashes to {actual}); "
                    "review the change and approve the new digest (`fedtrust node digest`), or restore the "
                    "approved files"
                )
            self._apps[cfg.name] = ApprovedApp(cfg.name, module, attribute, cfg.digest, src)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._apps))

    def get(self, model: str) -> Any:
        """The ClientApp for a job's `model`: the built-in one for registry models, else an approved app."""
        from fedtrust.training.spec import ARCHITECTURES

        if model in ARCHITECTURES:
            from fedtrust.training.clientapp import app

            return app
        approved = self._apps.get(model)
        if approved is None:
            raise PolicyViolation(
                f"model {model} is neither a registry model nor a ClientApp this node approved; "
                "its owner lists approved apps under [[clientapps]] in NODE.toml"
            )
        with self._lock:
            if model not in self._loaded:
                self._loaded[model] = self._load(approved)
            return self._loaded[model]

    @staticmethod
    def _load(a: ApprovedApp) -> Any:
        from flwr.clientapp import ClientApp

        files = _files(a.source)
        if _tree_digest(files, a.source.is_file()) != a.digest:
            raise PolicyViolation(f"ClientApp {a.name} changed on disk since the node started; the node refuses "
                                  "to run it until its owner approves the new digest")
        try:
            if a.source.is_file():
                module = _exec_single(a, files[a.source.name])
            else:
                module = _import_snapshot(a, files)
        except Exception as e:  # noqa: BLE001
            log.warning("ClientApp %s failed to load: %s: %s", a.name, type(e).__name__, e, exc_info=True)
            raise ConfigError(f"ClientApp {a.name} failed to load ({type(e).__name__}); fix the approved module "
                              "(the node's log has the traceback)") from None
        app = getattr(module, a.attribute, None)
        if not isinstance(app, ClientApp):
            raise ConfigError(f"ClientApp {a.name}: {a.module}:{a.attribute} is not a flwr.clientapp.ClientApp")
        return app


def _exec_single(a: ApprovedApp, source: bytes) -> types.ModuleType:
    """A single-file app, executed under a private module name from the bytes that were hashed."""
    name = f"_fedtrust_approved_{a.name.replace('-', '_').replace('.', '_')}"
    module = types.ModuleType(name)
    module.__file__ = str(a.source)
    module.__package__ = ""
    module.__spec__ = importlib.util.spec_from_loader(name, loader=None, origin=str(a.source))
    sys.modules[name] = module
    try:
        exec(compile(source, str(a.source), "exec"), module.__dict__)  # noqa: S102 - approved, pinned code
    except BaseException:
        del sys.modules[name]
        raise
    return module


_snapshot_lock = threading.Lock()


def _import_snapshot(a: ApprovedApp, files: dict[str, bytes]) -> types.ModuleType:
    """Import `a.module` under its own name with its package served from `files` (replacing any earlier copy)."""
    package = a.module.split(".")[0]
    with _snapshot_lock:
        sys.meta_path[:] = [f for f in sys.meta_path if not (isinstance(f, _Snapshot) and f.package == package)]
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            del sys.modules[name]
        sys.meta_path.insert(0, _Snapshot(package, a.source, files))
        importlib.invalidate_caches()
        return importlib.import_module(a.module)
