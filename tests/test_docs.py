"""The README and the pages under docs/: every relative link leads to a file that exists (and to a heading of it,
when it names one), every `resprout` command in a code block is one the CLI accepts (its keys and method options
checked as a run checks them before it starts), every `resprout.x.y` or `Trainer.x` a page quotes exists (BENCHMARKS.md
and the other top-level pages too), and the README stays about one screen (the details live in docs/).

Commands are checked, not run: training each would take the suite far past its budget. What is checked is what
goes stale when code changes: a renamed key, a removed option, a method that no longer exists, a flag the parser
no longer has.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from resprout.cli import build_parser, parse

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
COMMAND = re.compile(r"^(?:\$ )?(?:\S*/)?(?:resprout|torchrun [^-]*(?:--\S+ )*-m resprout) (.*)$")


def code_lines(text: str) -> list[str]:
    """The lines inside the page's fenced code blocks (a line ending in a backslash joined with the next)."""
    out, fence, pending = [], False, ""
    for line in text.splitlines():
        if line.startswith("```"):
            fence, pending = not fence, ""
        elif fence:
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            out.append(pending + line.strip())
            pending = ""
    return out


def commands() -> list[tuple[str, str]]:
    """(page, argument string) of every `resprout ...` line in a code block, its comment cut off."""
    found = []
    for page in PAGES:
        for line in code_lines(page.read_text()):
            m = COMMAND.match(line.strip())
            if m and "[" not in m.group(1):  # a synopsis (`[key=value ...]`) is not a command
                found.append((page.name, m.group(1).split("  #")[0].split(" # ")[0].strip()))
    return found


def test_the_pages_have_commands_to_check():
    # the README's own commands moved to docs/ with everything they configure: the check must see them there
    names = {page for page, _ in commands()}
    assert {"usage.md", "methods.md", "knowledge-evolution.md", "precision.md", "runs.md"} <= names


def anchors(page: Path) -> set[str]:
    """The fragments GitHub gives the page's headings (outside code blocks): lower case, punctuation dropped,
    spaces to hyphens, a repeated one numbered -1, -2, ..."""
    found, times = set(), {}
    fence = False
    for line in page.read_text().splitlines():
        fence = fence != line.startswith("```")
        m = None if fence else re.match(r"#{1,6} (.*)", line)
        if m:
            a = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            found.add(f"{a}-{times[a]}" if a in times else a)
            times[a] = times.get(a, 0) + 1
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_leads_to_a_file(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, fragment = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        assert path.exists(), f"{page.name} links to {target}, which does not exist"
        if fragment and path.suffix == ".md":  # a link into a page names one of its headings
            assert fragment in anchors(path), f"{page.name} links to {target}, a heading {path.name} does not have"


@pytest.mark.parametrize("page,args", commands(), ids=lambda x: x if isinstance(x, str) and len(x) < 40 else None)
def test_every_documented_command_is_accepted(page, args, monkeypatch):
    from resprout.config import load_config
    from resprout.methods import build_methods

    argv = shlex.split(args.replace("DIR", "some_run").replace("...", ""))
    ns = parse(build_parser(), argv)  # an unknown flag or command exits 2 here
    keys = [a for a in getattr(ns, "args", []) if "=" in a]
    if ns.command == "train":
        cfg = load_config(None, keys)  # every key, value and method option, as a run checks them
        build_methods(cfg)
    elif ns.command == "compare":
        from resprout.compare.grid import build_grid

        build_grid(keys, cpu_count=2)
    elif ns.command == "resume":
        from resprout.config import parse_overrides

        parse_overrides(keys)


CODE_NAME = re.compile(r"`((?:resprout\.|Trainer\.)[A-Za-z_][\w.]*\w)`")
CODE_PAGES = [*PAGES, *(ROOT / name for name in ("BENCHMARKS.md", "ARCHITECTURE.md", "RELIABILITY.md"))]


def resolve(name: str) -> object:
    """The object a dotted name in a page stands for: the longest importable module, then attributes;
    ``Trainer.x`` is an attribute of :class:`resprout.engine.trainer.Trainer`."""
    import importlib

    if name.startswith("Trainer."):
        name = "resprout.engine.trainer." + name
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(name)


@pytest.mark.parametrize("page", CODE_PAGES, ids=lambda p: p.name)
def test_every_code_name_a_page_quotes_exists(page):
    """`resprout.x.y` and `Trainer.x` in a page (generated sections too: a benchmark's text names what it times)
    name a module, class, function or attribute that exists, so that a rename cannot leave a page behind."""
    for name in sorted(set(CODE_NAME.findall(page.read_text()))):
        if name in ("resprout.db",):  # the store's file name, not a module
            continue
        try:
            resolve(name)
        except (ImportError, AttributeError):
            pytest.fail(f"{page.name} names `{name}`, which does not exist")


def test_the_readme_starts_short():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 100
    # the first screen: what resprout is, the two commands, the demo, the table of methods linking to their pages
    first = text.split("<!-- reproduction:start -->")[0]
    for name in ("make demo", "make test", "<!-- demo:start -->", "| family | methods | page |"):
        assert name in first
    for page in ("knowledge-evolution", "rejuvenation", "grafting", "distillation"):
        assert f"(docs/{page}.md)" in first
