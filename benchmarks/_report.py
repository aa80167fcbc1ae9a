"""Shared by the benchmark scripts: write one section of BENCHMARKS.md between markers, keep the others."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"


def write_section(name: str, lines: list[str], path: Path = BENCHMARKS) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = start + "\n" + "\n".join(lines).rstrip() + "\n" + end
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if start in text:
        head, _, rest = text.partition(start)
        _, _, tail = rest.partition(end)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
