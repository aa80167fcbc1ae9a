"""The errors resprout shows to users.

Every error a user can cause (a bad key, value, path, file or checkpoint) is a :class:`ResproutError`. The command
line prints its message as one line on stderr and exits with its ``exit_code``; no traceback. Anything else that
escapes is a bug in resprout and keeps its traceback.
"""

from __future__ import annotations


class ResproutError(Exception):
    """A problem the user can fix. The message is one line naming what was wrong and what is allowed."""

    exit_code = 2


class ConfigError(ResproutError):
    """A bad configuration key or value."""


class DataError(ResproutError):
    """A missing, empty, unreadable or truncated data source."""


class CheckpointError(ResproutError):
    """A corrupted or foreign checkpoint, or a run directory that does not match the configuration."""


class TrainingDiverged(ResproutError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 3


class Interrupted(ResproutError):
    """Ctrl-C (SIGINT) or SIGTERM: the run checkpointed at a step boundary and stopped; ``resume`` continues it."""

    exit_code = 130


class StoreError(ResproutError):
    """The results store cannot be used: read-only, full, of another schema, corrupt, or at an impossible path."""


class NoSpaceError(ResproutError):
    """The disk filled while writing a file (a checkpoint); the previous complete file is kept."""
