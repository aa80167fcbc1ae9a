"""Imports point down: no import circle between resprout's modules and no import from a lower layer to a higher one.

Every ``import`` of ``resprout/`` counts, at module level or inside a function (a deferred import is still a
dependency); imports under ``if TYPE_CHECKING:`` do not (they never run). Layers, lowest first::

    errors, registry, options, config, seeding, lazy_dynamo   the bottom: import nothing above them
    data, models                                              (either may import the other)
    surgery
    engine
    methods
    analysis
    run, compare, describe, cli, __init__, __main__           the top

Run ``python -m tests.test_layers`` for the full report (every circle and upward import).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "resprout"

LAYERS: dict[str, int] = {
    "errors": 0, "registry": 0, "options": 0, "config": 0, "seeding": 0, "lazy_dynamo": 0,
    "data": 1, "models": 1,
    "surgery": 2,
    "engine": 3,
    "methods": 4,
    "analysis": 5,
    "run": 6, "compare": 6, "describe": 6, "cli": 6, "__init__": 6, "__main__": 6,
}

# The only circle allowed, until it is taken apart (another change removes it): the trainer's mixins. The trainer
# class inherits from the state and evaluation mixins, and they import the trainer module back for its constants and
# for type names used at run time.
ALLOWED_CIRCLES: list[set[str]] = [
    {"resprout.engine.trainer", "resprout.engine.state", "resprout.engine.evaluation"},
]


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under ``root`` (a package's ``__init__`` is the package)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements that can run: all of them but those in the body of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, known: dict[str, Path]) -> dict[str, int]:
    """The resprout modules that module ``name`` imports, with the line of the first such import. ``from a.b import
    c`` is an import of ``a.b.c`` when that is a module, else of ``a.b``."""
    is_package = path.name == "__init__.py"
    out: dict[str, int] = {}
    for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: from the package this module is in
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            while target and target not in known:  # `import resprout.x.y` of a module: its nearest known part
                target = target.rpartition(".")[0]
            if target and target != name:
                out.setdefault(target, node.lineno)
    return out


def graph(root: Path = PACKAGE) -> dict[str, dict[str, int]]:
    known = modules(root)
    return {name: imports_of(name, path, known) for name, path in known.items()}


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else "__init__"]


def upward(edges: dict[str, dict[str, int]]) -> list[str]:
    """``a (layer) imports b (higher layer) at line n`` for every import from a lower layer to a higher one."""
    out = []
    for a, targets in sorted(edges.items()):
        for b, line in sorted(targets.items()):
            if layer(b) > layer(a):
                out.append(f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)}) at line {line}")
    return out


def circles(edges: dict[str, dict[str, int]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm): each is an import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def report(edges: dict[str, dict[str, int]]) -> list[str]:
    """One line per problem: circles not on the allowlist, then upward imports."""
    lines = [f"import circle: {', '.join(sorted(c))}" for c in circles(edges) if c not in ALLOWED_CIRCLES]
    return lines + [f"upward import: {line}" for line in upward(edges)]


# -- the checks --------------------------------------------------------------------------------------------------------
def test_every_module_has_a_layer():
    assert [m for m in modules() if m.split(".")[1:2] and m.split(".")[1] not in LAYERS] == []


def test_resprout_has_no_import_circle_and_no_upward_import():
    assert report(graph()) == []


def test_the_check_finds_a_circle_an_upward_import_and_ignores_type_checking(tmp_path):
    """A hand-made package with one knot of each kind (and the forms of import the walk must read)."""
    pkg = tmp_path / "resprout"
    for sub in ("surgery", "engine", "methods"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "surgery" / "graph.py").write_text("def f():\n    from resprout.surgery.channels import g\n")
    (pkg / "surgery" / "channels.py").write_text("from . import graph\n")
    (pkg / "engine" / "taps.py").write_text("import resprout.methods.x\n")  # upward, by `import a.b.c`
    (pkg / "methods" / "x.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                          "    from resprout.surgery import graph\nfrom resprout.engine import taps\n")
    (pkg / "config.py").write_text("import typing\nif typing.TYPE_CHECKING:\n    import resprout.engine.taps\n")
    edges = graph(pkg)
    assert edges["resprout.surgery.graph"] == {"resprout.surgery.channels": 2}
    assert edges["resprout.surgery.channels"] == {"resprout.surgery.graph": 1}
    assert edges["resprout.methods.x"] == {"resprout.engine.taps": 4}
    assert edges["resprout.config"] == {}
    assert circles(edges) == [{"resprout.engine.taps", "resprout.methods.x"},
                              {"resprout.surgery.channels", "resprout.surgery.graph"}] or \
        sorted(map(sorted, circles(edges))) == [["resprout.engine.taps", "resprout.methods.x"],
                                                ["resprout.surgery.channels", "resprout.surgery.graph"]]
    assert upward(edges) == ["resprout.engine.taps (layer 3) imports resprout.methods.x (layer 4) at line 1"]


if __name__ == "__main__":
    problems = report(graph())
    print("\n".join(problems) or "no import circle, no upward import")
    sys.exit(1 if problems else 0)
