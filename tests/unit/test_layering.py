"""The package DAG: common → trust / privacy → query / training / transport → roles → demo → cli.

Every `fedtrust.X` import of every module is counted, lazy ones (inside functions, under TYPE_CHECKING) too:
no cycle between packages, no role importing another role, and trust importing only common and privacy
(rules checks reach it as parameters). The same rules as the project's layering hook.
"""
from __future__ import annotations

import ast
import tomllib
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROLES = {"node", "coordinator", "buyer", "exchange"}
#: the order of the layers; a package may import only packages of a lower layer (or its own)
LAYERS = [{"common", "v1"}, {"trust", "privacy"}, {"query", "training", "transport"}, ROLES, {"demo"}, {"cli"}]
RANK = {p: i for i, layer in enumerate(LAYERS) for p in layer}


def _package_dirs() -> dict[str, Path]:
    dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    return {m.split(".")[1] if "." in m else "common": ROOT / d for m, d in dirs.items()}


def _target(module: str, packages: set[str]) -> str | None:
    parts = module.split(".")
    if parts[0] != "fedtrust":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in packages else "common"


def package_edges(dirs: dict[str, Path]) -> dict[str, set[tuple[str, str]]]:
    """package -> {(imported package, file)} over every import statement in the package's modules."""
    edges: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for pkg, folder in dirs.items():
        files = folder.glob("*.py") if pkg == "common" else folder.rglob("*.py")
        for f in files:
            if "_pb2" in f.name:
                continue
            for node in ast.walk(ast.parse(f.read_text(), str(f))):
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    mods = [node.module] + [f"fedtrust.{a.name}" for a in node.names if node.module == "fedtrust"]
                else:
                    continue
                for m in mods:
                    t = _target(m, set(dirs))
                    if t is not None and t != pkg:
                        edges[pkg].add((t, str(f.relative_to(ROOT))))
    return edges


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = 2
        path.pop()
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def violations(edges: dict[str, set[tuple[str, str]]]) -> list[str]:
    bad = []
    for a, outs in edges.items():
        for b, where in sorted(outs):
            if a in ROLES and b in ROLES:
                bad.append(f"role imports role: {a} -> {b} ({where})")
            elif a == "trust" and b not in {"common", "v1", "privacy"}:
                bad.append(f"trust imports above it: trust -> {b} ({where})")
            elif a in RANK and b in RANK and RANK[b] > RANK[a]:
                bad.append(f"import against the layer order: {a} -> {b} ({where})")
    cycle = _cycle({a: {b for b, _ in outs} for a, outs in edges.items()})
    if cycle:
        bad.append("cycle between packages: " + " -> ".join(cycle))
    return bad


def test_every_package_has_a_layer():
    assert set(_package_dirs()) <= set(RANK), "a new package needs its place in LAYERS (and docs/ARCHITECTURE.md)"


def test_packages_form_the_layered_dag():
    assert violations(package_edges(_package_dirs())) == []


def test_the_check_sees_lazy_imports_cycles_and_role_imports(tmp_path):
    """The check can fail: a lazy import inside a function, a role → role and a cycle are all reported."""
    for pkg, body in {
        "trust": "def f():\n    from fedtrust.query.sql import plan_query\n",
        "query": "from fedtrust.trust import jobs\n",
        "node": "import fedtrust.coordinator.store\n",
        "coordinator": "from fedtrust.trust.jobs import JobSpec\n",
    }.items():
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "m.py").write_text(body)
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        bad = violations(package_edges({p: tmp_path / p for p in ("trust", "query", "node", "coordinator")}))
    finally:
        ROOT = saved
    assert "trust imports above it: trust -> query (trust/m.py)" in bad
    assert "role imports role: node -> coordinator (node/m.py)" in bad
    assert any(b.startswith("cycle between packages: ") and "query" in b and "trust" in b for b in bad)
