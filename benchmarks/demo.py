"""The demo: ``make demo`` and the README's first screen.

``make demo`` runs one ``resprout compare`` on the embedded digits: plain cross-entropy (the equal-compute
baseline), Knowledge Evolution and Filter Grafting, two seeds. Its keys are the Makefile's ``DEMO`` variable, the
one place they are written. This script runs the same comparison afresh (in ``benchmarks/runs/demo``, git-ignored)
and writes what it printed into the README's demo section (between ``<!-- demo:start -->`` and
``<!-- demo:end -->``) and its plot to ``docs/demo.png``, so the README shows a real run of the current code::

    python -m benchmarks.demo
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from pathlib import Path

from benchmarks._report import write_section

ROOT = Path(__file__).resolve().parents[1]
MAKEFILE = ROOT / "Makefile"
README = ROOT / "README.md"
IMAGE = ROOT / "docs" / "demo.png"
WORK = ROOT / "benchmarks" / "runs" / "demo"
SECTION = "demo"
OUT = "runs/demo"  # where `make demo` writes (git-ignored)


def demo_args(makefile: Path = MAKEFILE) -> list[str]:
    """The demo's ``key=value`` arguments: the Makefile's ``DEMO = ...`` line."""
    found = re.search(r"^DEMO\s*:?=\s*(.+?)\s*$", makefile.read_text(), re.M)
    if not found:
        raise SystemExit(f"{makefile} has no DEMO = ... line")
    return found.group(1).split()


def section(result: dict, args: list[str], seconds: float, image: str) -> list[str]:
    """The README's demo section: the command, what it printed (the comparison's caption and tables, as written to
    comparison.md) and the plot. ``seconds``: the comparison's wall time here, measured by :func:`main`."""
    command = f"resprout compare {' '.join(args)} --out {OUT}"
    return ["`make demo` runs the main job of resprout: Knowledge Evolution and Filter Grafting against plain "
            "cross-entropy trained as long (the equal-compute baseline), on the same data, seeds and budget:",
            "", "```", f"$ {command}", "```", "",
            f"It took {seconds:.0f} s here (2-core machine, one thread). It prints the table below and writes "
            f"`{OUT}/comparison.png`:", "",
            result["table"].strip(), "",
            f"![test top-1 against epochs of the demo, mean and ±1 std band over seeds, generation boundaries "
            f"marked]({image})"]


def main(argv: list[str] | None = None, *, readme: Path = README, image: Path = IMAGE, work: Path = WORK,
         makefile: Path = MAKEFILE) -> dict:
    """Run the demo's comparison afresh in ``work``, then write the README section and the image."""
    from resprout.compare import compare

    args = demo_args(makefile)
    if work.exists():  # this script's own folder: always a fresh run of the current code
        shutil.rmtree(work)
    t0 = time.monotonic()
    result = compare(args, work)
    seconds = time.monotonic() - t0
    if result["status"] != "finished":
        raise SystemExit(f"the demo's comparison did not finish: {result['failed']}")
    image.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(work / "comparison.png", image)
    write_section(SECTION, section(result, args, seconds, image.relative_to(readme.parent).as_posix()), readme)
    print(result["table"])
    print(f"wrote the {SECTION} section of {readme} and {image} ({seconds:.0f} s)", file=sys.stderr)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
