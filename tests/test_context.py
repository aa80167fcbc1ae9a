"""The method context is the methods' contract: no method reaches a private attribute of the run, and every
attribute a method reads of its context is one :class:`~resprout.engine.context.RunContext` documents."""

from __future__ import annotations

import ast
from pathlib import Path

from resprout.engine.context import RunContext

METHODS = Path(__file__).resolve().parents[1] / "resprout" / "methods"
# the names a method gives the context it receives (handlers' first argument after self, and helpers passing it on)
CONTEXT_NAMES = {"trainer", "ctx", "context"}


def context_accesses(root: Path = METHODS) -> list[tuple[str, int, str]]:
    """(file, line, attribute) of every ``<context name>.<attribute>`` under ``root``, read with ``ast``."""
    out = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in CONTEXT_NAMES:
                out.append((str(path.relative_to(root.parent)), node.lineno, node.attr))
    return out


def test_no_method_touches_a_private_attribute_of_the_run():
    private = [f"{f}:{line}: .{attr}" for f, line, attr in context_accesses() if attr.startswith("_")]
    assert private == []


def test_every_attribute_a_method_uses_is_part_of_the_context():
    public = {n for n in dir(RunContext) if not n.startswith("_")}
    unknown = [f"{f}:{line}: .{attr}" for f, line, attr in context_accesses() if attr not in public]
    assert unknown == []


def test_the_check_reads_private_and_unknown_accesses(tmp_path):
    """A hand-written method file with one access of each kind: the walk finds exactly those."""
    (tmp_path / "m.py").write_text("def on_loss(self, ctx):\n    ctx.add_loss('model', 'ce', ctx._terms)\n"
                                   "    trainer.nothing_here\n    other._x\n")
    where = f"{tmp_path.name}/m.py"
    assert sorted(context_accesses(tmp_path)) == [(where, 2, "_terms"), (where, 2, "add_loss"),
                                                  (where, 3, "nothing_here")]
