"""ClientApps a node runs: the built-in one, and apps its owner approved by name and source digest.

A node never runs code from the buyer or the coordinator. Besides the
built-in ClientApp (`fedtrust.training.clientapp`, for the registry models),
it runs only the apps listed in its NODE.toml::

    [[clientapps]]
    name = "loans-weighted"            # what contracts and jobs call it
    target = "my_apps.loans:app"       # module:attribute, a flwr.clientapp.ClientApp
    digest = "<sha256 of my_apps/loans.py>"   # `fedtrust node digest my_apps/loans.py`

The module's source file is located on `sys.path` *without importing it*,
hashed, and compared with the approved digest when the node starts (a
mismatch stops the node, like a data file that does not match its
commitment). When a job first needs the app, the file is read again, hashed
again, and exactly those bytes are compiled and executed, so the code that
runs is the code that was approved. (Packages the module imports are ordinary
installed packages and are not pinned.)
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
import threading
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtrust.config import ClientAppConfig
from fedtrust.errors import ConfigError, PolicyViolation

__all__ = ["AppRegistry", "BUILTIN"]

BUILTIN = "fedtrust.builtin"


@dataclass(frozen=True)
class ApprovedApp:
    name: str
    module: str
    attribute: str
    digest: str
    source: Path


def _locate(module: str) -> Path:
    """The module's source file on sys.path, found without executing any code."""
    parts = module.split(".")
    for entry in sys.path:
        base = Path(entry or ".")
        for candidate in (base.joinpath(*parts).with_suffix(".py"), base.joinpath(*parts, "__init__.py")):
            if candidate.is_file():
                return candidate.resolve()
    raise ConfigError(f"ClientApp module {module} is not on this node's Python path; install it or fix `target`")


def _digest(path: Path) -> tuple[str, bytes]:
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), data


class AppRegistry:
    """Verified at construction; each app is loaded once, from the bytes that were hashed."""

    def __init__(self, approved: tuple[ClientAppConfig, ...]) -> None:
        self._apps: dict[str, ApprovedApp] = {}
        self._loaded: dict[str, Any] = {}
        self._lock = threading.Lock()
        for cfg in approved:
            module, _, attribute = cfg.target.partition(":")
            src = _locate(module)
            actual, _ = _digest(src)
            if actual != cfg.digest:
                raise ConfigError(
                    f"[[clientapps]] {cfg.name}: {src} does not match its approved digest (it hashes to {actual}); "
                    "review the change and approve the new digest, or restore the approved file"
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

        actual, source = _digest(a.source)
        if actual != a.digest:
            raise PolicyViolation(f"ClientApp {a.name} changed on disk since the node started; the node refuses "
                                  "to run it until its owner approves the new digest")
        name = f"_fedtrust_approved_{a.name.replace('-', '_').replace('.', '_')}"
        module = types.ModuleType(name)
        module.__file__ = str(a.source)
        module.__package__ = a.module.rpartition(".")[0]
        module.__spec__ = importlib.util.spec_from_loader(name, loader=None, origin=str(a.source))
        sys.modules[name] = module
        try:
            exec(compile(source, str(a.source), "exec"), module.__dict__)  # noqa: S102 - approved, pinned code
        except Exception as e:  # noqa: BLE001
            del sys.modules[name]
            raise ConfigError(f"ClientApp {a.name} failed to load ({type(e).__name__}); fix the approved module") from None
        app = getattr(module, a.attribute, None)
        if not isinstance(app, ClientApp):
            raise ConfigError(f"ClientApp {a.name}: {a.module}:{a.attribute} is not a flwr.clientapp.ClientApp")
        return app
