"""Run directories: ``run.json`` names the run, its resolved configuration and the results store it reports to."""

from __future__ import annotations

import json
from pathlib import Path

from resprout.errors import CheckpointError

RUN_FILE = "run.json"


def read_run_file(run_dir: Path) -> dict:
    f = Path(run_dir) / RUN_FILE
    if not f.is_file():
        raise CheckpointError(f"{run_dir} is not a resprout run directory (no {RUN_FILE})")
    try:
        info = json.loads(f.read_text())
        _ = info["run_id"], info["config"], info["store"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{f} is corrupted ({type(e).__name__}: {e}); nothing was changed") from None
    return info


def write_run_file(run_dir: Path, info: dict) -> None:
    (Path(run_dir) / RUN_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
