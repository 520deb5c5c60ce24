"""Expected failures: problems the user can fix, each one clear message.

Each is raised where the problem is found, with a message that names the
field, file (and line) or model, the bad value, and what would be valid or
the command that fixes it. `python -m w2s_jax.main` catches these, and only
these: it prints ``error: <message>`` without a traceback and exits with
the class's `exit_status`, 2 for usage (a bad config value or flag) and 1
for the rest. Any other exception is a bug and keeps its traceback.

All are ValueErrors, so callers (and tests) that catch ValueError still do.
"""
from __future__ import annotations


class ExpectedError(ValueError):
    """A failure the user can act on; `main` prints it as one line."""
    exit_status = 1


class UsageError(ExpectedError):
    """A bad config value, flag or config file."""
    exit_status = 2


class DataError(ExpectedError):
    """Data that cannot be used: a mirror file that does not parse, rows
    without a needed field, a task the mirror lacks, no hub to read from."""


class DataFileNotFound(DataError, FileNotFoundError):
    """A mirror directory or file that is not there (also a
    FileNotFoundError, as before these classes existed)."""


class ModelError(ExpectedError):
    """Weights that cannot be used: a checkpoint directory without a config,
    damaged or pickled weights, a model that is neither cached nor
    downloadable."""


class WorkdirError(ExpectedError):
    """A workdir that is not, and cannot become, a writable directory."""

