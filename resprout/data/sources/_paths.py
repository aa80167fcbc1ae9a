"""Where the on-disk sources look for their files: the user's data_path, then ``$RESPROUT_DATA``."""

from __future__ import annotations

import os
from pathlib import Path

from resprout.errors import DataError


def env_dirs() -> list[Path]:
    env = os.environ.get("RESPROUT_DATA")
    return [Path(env).expanduser()] if env else []


def user_path(source: str, path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p} does not exist (data_path of data source {source!r})")
    if not p.is_dir():
        raise DataError(f"{p} is not a folder (data_path of data source {source!r})")
    return p
