"""User-facing errors.

Every error a user can cause (an unknown environment or config key, a wrong type, an
out-of-range action, a corrupt checkpoint, a crashing worker) is a :class:`MarlError`.
The CLI prints its message on one line and exits with :attr:`MarlError.exit_code`, never
with a bare traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MarlError(Exception):
    """Base class of the errors caused by user input; the CLI prints them on one line."""

    exit_code: int = 2


class UnknownNameError(MarlError, KeyError):
    """An unknown environment, algorithm or config key."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(MarlError, ValueError):
    """A config value of the wrong type or out of range."""


class ActionError(MarlError, ValueError):
    """Actions of the wrong shape, type or range given to an environment."""


class WorkerError(MarlError, RuntimeError):
    """An environment copy raised inside a worker process."""

    exit_code = 1


class CheckpointError(MarlError, RuntimeError):
    """A checkpoint that is missing, corrupt or does not match the run."""


def unknown(kind: str, name: str, valid: Iterable[str]) -> UnknownNameError:
    """Build the error for an unknown ``name`` of ``kind``, naming the closest valid names."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    listing = ", ".join(valid) if len(valid) <= 40 else ", ".join(valid[:40]) + ", ..."
    return UnknownNameError(f"unknown {kind} {name!r}.{hint} Valid: {listing}")


def first_line(err: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its type name when empty), for one-line
    reports; cut to ``limit`` characters when given."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return line if limit is None or len(line) <= limit else line[:limit] + "..."
