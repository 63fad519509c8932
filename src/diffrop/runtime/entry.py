"""What the entry points (src/train.py, src/eval.py, src/classify.py) share: an expected user error is one line.

A bad config value, missing data, a wrong or corrupt checkpoint, a NaN loss or a full disk is the user's to fix:
``error: <what was wrong and how to fix it>`` on stderr and exit code 1, not a traceback.
``HYDRA_FULL_ERROR=1`` shows the whole traceback instead; the run dir's FAILED file always keeps it.
Errors of this package that are the user's to fix derive from ``UserError`` (a full disk, a NaN loss); the
builtin ones (ValueError, FileNotFoundError, NotADirectoryError) carry a message written for the user.
"""

from __future__ import annotations

import os
import re
import sys


class UserError(Exception):
    """An error whose message says what to fix; the entry points print it as one line."""


USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, UserError)


def user_error(err: BaseException | None) -> str | None:
    """The message of an expected user error, looking through Hydra's InstantiationException wrapper."""
    key = None
    while err is not None:
        if m := re.search(r"full_key: (\S+)", str(err)):
            key = m[1]
        if isinstance(err, USER_ERRORS):
            where = f" [config key {key}]" if key and key not in str(err) else ""
            return f"{type(err).__name__}: {err}{where}"
        err = err.__cause__
    return None


def stop(message: str, multirun: bool = False) -> None:
    """``error: <message>`` on stderr and exit code 1.

    In a Hydra multirun (``build.is_multirun()``) this returns instead: the caller re-raises, so that Hydra
    records the failed job, runs the remaining ones, then exits non-zero.
    """
    print(f"error: {message}", file=sys.stderr)
    if not multirun:
        sys.exit(1)


def stop_on_user_error(err: BaseException, multirun: bool = False) -> None:
    """``stop`` with the message of an expected user error; returns (for the caller to re-raise) on any other
    error, or when ``HYDRA_FULL_ERROR`` asks for the traceback."""
    if (message := user_error(err)) and not os.environ.get("HYDRA_FULL_ERROR"):
        stop(message.split(": ", 1)[1], multirun)
