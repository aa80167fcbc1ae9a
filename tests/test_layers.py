"""Imports point down: no import circle between resprout's modules and no import from a lower layer to a higher one.

Every ``import`` of ``resprout/`` counts, at module level or inside a function (a deferred import is still a
dependency). Imports under ``if TYPE_CHECKING:`` never run: they count for the layers and for circles of names
(:data:`ALLOWED_CIRCLES`), but no circle at all is allowed among the imports that run. Layers, lowest first::

    errors, registry, options, config, seeding, lazy_dynamo   the bottom: import nothing above them
    data, models                                              (either may import the other)
    surgery
    engine
    methods
    analysis
    inputs, run, compare, describe, cli, __init__, __main__   the top

Run ``python -m tests.test_layers`` for the full report (every circle and upward import).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "resprout"

LAYERS: dict[str, int] = {
    "errors": 0, "registry": 0, "options": 0, "config": 0, "hardware": 0, "seeding": 0, "lazy_dynamo": 0,
    "data": 1, "models": 1,
    "surgery": 2, "metrics": 2,
    "engine": 3,
    "methods": 4,
    "analysis": 5,
    "inputs": 6, "run": 6, "compare": 6, "describe": 6, "cli": 6, "__init__": 6, "__main__": 6,
}

# Circles allowed through TYPE_CHECKING imports only: none (the engine's mixins were made collaborators of the loop;
# an entry here must be an existing circle, see the test below).
ALLOWED_CIRCLES: list[set[str]] = []


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


def _imports(tree: ast.AST, types: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements of ``tree``; those in the body of ``if TYPE_CHECKING:`` only with ``types``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test) and not types:
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, known: dict[str, Path], *, types: bool = False) -> dict[str, int]:
    """The resprout modules that module ``name`` imports (with ``types``, also under TYPE_CHECKING), with the line
    of the first such import. ``from a.b import c`` is an import of ``a.b.c`` when that is a module, else of
    ``a.b``."""
    is_package = path.name == "__init__.py"
    out: dict[str, int] = {}
    for node in _imports(ast.parse(path.read_text(), str(path)), types):
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


def graph(root: Path = PACKAGE, *, types: bool = False) -> dict[str, dict[str, int]]:
    known = modules(root)
    return {name: imports_of(name, path, known, types=types) for name, path in known.items()}


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
    return sorted(found, key=sorted)


def report(root: Path = PACKAGE) -> list[str]:
    """One line per problem: circles of imports that run, circles of names not on the allowlist, upward imports."""
    runs, names = graph(root), graph(root, types=True)
    lines = [f"import circle: {', '.join(sorted(c))}" for c in circles(runs)]
    lines += [f"import circle through TYPE_CHECKING: {', '.join(sorted(c))}" for c in circles(names)
              if c not in ALLOWED_CIRCLES and c not in circles(runs)]
    return lines + [f"upward import: {line}" for line in upward(names)]


# -- the checks --------------------------------------------------------------------------------------------------------
def test_every_module_has_a_layer():
    assert [m for m in modules() if m.split(".")[1:2] and m.split(".")[1] not in LAYERS] == []


def test_resprout_has_no_import_circle_and_no_upward_import():
    assert report() == []


def test_the_allowed_circle_is_still_there():
    """Once the mixins circle is gone, drop it from ALLOWED_CIRCLES (so that it cannot come back unnoticed)."""
    assert all(c in circles(graph(types=True)) for c in ALLOWED_CIRCLES)


def test_the_check_finds_circles_and_upward_imports_and_reads_type_checking_imports_apart(tmp_path):
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
    assert graph(pkg, types=True)["resprout.config"] == {"resprout.engine.taps": 3}
    assert graph(pkg, types=True)["resprout.methods.x"] == {"resprout.surgery.graph": 3, "resprout.engine.taps": 4}
    assert report(pkg) == [
        "import circle: resprout.engine.taps, resprout.methods.x",
        "import circle: resprout.surgery.channels, resprout.surgery.graph",
        "upward import: resprout.config (layer 0) imports resprout.engine.taps (layer 3) at line 3",
        "upward import: resprout.engine.taps (layer 3) imports resprout.methods.x (layer 4) at line 1"]
    edges = graph(pkg)
    assert edges["resprout.surgery.graph"] == {"resprout.surgery.channels": 2}
    assert edges["resprout.surgery.channels"] == {"resprout.surgery.graph": 1}
    assert edges["resprout.methods.x"] == {"resprout.engine.taps": 4}
    assert edges["resprout.config"] == {}
    assert circles(edges) == [{"resprout.engine.taps", "resprout.methods.x"},
                              {"resprout.surgery.channels", "resprout.surgery.graph"}]
    assert upward(edges) == ["resprout.engine.taps (layer 3) imports resprout.methods.x (layer 4) at line 1"]


if __name__ == "__main__":
    problems = report()
    print("\n".join(problems) or "no import circle, no upward import")
    sys.exit(1 if problems else 0)
