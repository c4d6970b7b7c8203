"""The import graph of sbilab follows DESIGN.md: arrows point down, no cycles.

Every module is parsed (function-level imports included; only ``if TYPE_CHECKING:`` blocks,
which never run, are skipped) and each import between two parts of the package is checked
against the layer table below. A new top-level part must be given a layer here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "sbilab"

# part of the package -> layer; an import may only point to a lower layer, or within the
# same layer where SAME_LAYER_OK allows it.
LAYERS = {
    "exceptions": 0, "_version": 0,
    "registry": 1, "durable": 1,
    "events": 2, "paired": 2,
    "simulators": 3, "nets": 3, "store_format": 3, "store": 3,
    "estimators": 4, "training": 4, "publish": 4,
    "stats": 5, "calibration": 5, "inference": 5, "io": 5, "distributed": 5,
    # applications: built on the core, never on each other
    "unfolding": 6, "mem": 6, "anomaly": 6, "surrogates": 6, "reinterpret": 6,
    "analysis": 7, "cli": 7, "__init__": 8,
}
SAME_LAYER_OK = {
    ("store", "store_format"), ("paired", "events"),
    ("estimators", "training"), ("training", "estimators"),  # losses may need training helpers and vice versa; cycles are checked below
    ("stats", "calibration"), ("calibration", "stats"), ("inference", "stats"), ("stats", "inference"),
    ("io", "stats"), ("io", "calibration"), ("distributed", "stats"), ("io", "distributed"), ("distributed", "io"),
    ("analysis", "cli"), ("cli", "analysis"),
}
FORBIDDEN = {  # stated explicitly in DESIGN.md, whatever the layers say
    ("simulators", "nets"), ("nets", "simulators"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """Modules of sbilab imported anywhere in ``path`` (outside TYPE_CHECKING blocks)."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for block in ast.walk(tree) if _is_type_checking(block) for stmt in block.body for n in ast.walk(stmt)}
    found = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t.startswith("sbilab") and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(paths)
    return {name: _imports(path, name, modules) for name, path in paths.items()}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


GRAPH = _graph()


def test_every_part_has_a_layer():
    missing = sorted({_part(m) for m in GRAPH} - set(LAYERS))
    assert not missing, f"give these parts of sbilab a layer in tests/test_layers.py: {missing}"


def test_imports_point_down():
    bad = []
    for module, targets in GRAPH.items():
        a = _part(module)
        for target in targets:
            b = _part(target)
            if a == b or b == "__init__" and target == "sbilab":
                if b == "__init__" and a != "__init__":
                    bad.append(f"{module} -> {target} (the package root imports everything; import the module instead)")
                continue
            if (a, b) in FORBIDDEN or LAYERS[b] > LAYERS[a] or (LAYERS[b] == LAYERS[a] and (a, b) not in SAME_LAYER_OK):
                bad.append(f"{module} ({a}, layer {LAYERS[a]}) -> {target} ({b}, layer {LAYERS[b]})")
    assert not bad, "imports against DESIGN.md's direction:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    # only edges between modules that are not packages' __init__ (a package re-exporting its own
    # modules is not a cycle between files)
    inits = {_module_name(p) for p in ROOT.rglob("__init__.py")}
    edges = {m: {t for t in ts if t not in inits} for m, ts in GRAPH.items() if m not in inits}
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles between modules:\n" + "\n".join(cycles)


@pytest.mark.parametrize("source, target, allowed", [
    ("sbilab.estimators.x", "sbilab.stats.y", False),
    ("sbilab.unfolding.x", "sbilab.mem.y", False),
    ("sbilab.nets.x", "sbilab.simulators.y", False),
    ("sbilab.stats.x", "sbilab.estimators.y", True),
])
def test_the_rule_itself(source, target, allowed):
    """The checker rejects what DESIGN.md forbids (so the tests above can fail)."""
    a, b = _part(source), _part(target)
    ok = (a, b) not in FORBIDDEN and (LAYERS[b] < LAYERS[a] or (LAYERS[b] == LAYERS[a] and (a, b) in SAME_LAYER_OK))
    assert ok is allowed
