"""The demo: `make demo` runs the Makefile's DEMO comparison, and the README's first screen shows that comparison's
real output (written by benchmarks/demo.py from a run, never typed), with its plot."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from benchmarks import demo
from tests.conftest import ROOT


def _section(text: str) -> str:
    start, end = f"<!-- {demo.SECTION}:start -->", f"<!-- {demo.SECTION}:end -->"
    assert text.count(start) == 1 and text.count(end) == 1
    return text.split(start)[1].split(end)[0]


@pytest.mark.slow
def test_make_demo_runs_the_demo_comparison():
    """What `make` itself would run (a dry run, -n) is `resprout compare` with the DEMO keys the script reads."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    proc = subprocess.run(["make", "-s", "-n", "-C", str(ROOT), "demo", "BIN=BIN", "VENV=.", "-o", "./.installed"],
                          capture_output=True, text=True, check=True)
    assert proc.stdout.splitlines()[-1].split() == ["BIN/resprout", "compare", *demo.demo_args(), "--out",
                                                    demo.OUT]


def test_the_readme_shows_the_demo_of_the_makefile():
    """The committed section names the Makefile's command, a table row per method of the DEMO keys, and the plot
    committed beside it (a stale section, after DEMO changed, fails here)."""
    args = demo.demo_args()
    text = _section((ROOT / "README.md").read_text())
    assert f"$ resprout compare {' '.join(args)} --out {demo.OUT}\n" in text
    methods = next(a for a in args if a.startswith("method=")).partition("=")[2].split(",")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "±" in line]
    named = [re.sub(r"[*]", "", line.split("|")[1]).split()[0] for line in rows]
    assert named[:len(methods)] == methods
    image = re.search(r"!\[[^]]*\]\(([^)]+)\)", text).group(1)
    assert (ROOT / image).resolve() == demo.IMAGE and demo.IMAGE.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_the_script_writes_what_the_comparison_printed(tmp_path, monkeypatch):
    """benchmarks.demo on a tiny DEMO: the README section holds comparison.md's text, and the image is its plot."""
    makefile = tmp_path / "Makefile"
    makefile.write_text("DEMO = method=ce,ke seeds=0,1 data=digits per_class=10 model=cnn epochs=1 generations=2 "
                        "threads=1\n\ndemo:\n\techo $(DEMO)\n")
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- demo:start -->\nold\n<!-- demo:end -->\n\nrest\n")
    image, work = tmp_path / "docs" / "demo.png", tmp_path / "work"
    (work / "runs").mkdir(parents=True)
    (work / "stale").write_text("from an earlier run")  # the script's own folder is emptied first
    result = demo.main([], readme=readme, image=image, work=work, makefile=makefile)
    text = readme.read_text()
    assert text.startswith("# x\n\n<!-- demo:start -->\n") and text.endswith("<!-- demo:end -->\n\nrest\n")
    section = _section(text)
    written = (work / "comparison.md").read_text()
    table = written.split("\n![")[0].strip()  # comparison.md without its own image line
    assert result["table"].strip() == table and f"\n{table}\n" in section
    assert "$ resprout compare method=ce,ke seeds=0,1 data=digits per_class=10 model=cnn epochs=1 generations=2 " \
           "threads=1 --out runs/demo\n" in section
    assert section.rstrip().endswith("](docs/demo.png)")
    assert image.read_bytes() == (work / "comparison.png").read_bytes()
    assert not (work / "stale").exists() and "old" not in section
