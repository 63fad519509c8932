"""What the entry points (src/train.py, src/eval.py, src/classify.py) share: ``guarded_run``, their run lifecycle,
and its rule that an expected user error is one line.

A bad config value, missing data, a wrong or corrupt checkpoint, a NaN loss or a full disk is the user's to fix:
``error: <what was wrong and how to fix it>`` on stderr and exit code 1, not a traceback.
``HYDRA_FULL_ERROR=1`` shows the whole traceback instead; the run dir's FAILED file always keeps it.
Errors of this package that are the user's to fix derive from ``UserError`` (a full disk, a NaN loss); the
builtin ones (ValueError, FileNotFoundError, NotADirectoryError) carry a message written for the user.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from diffrop.runtime.run_lock import RunDirLocked, run_dir_lock
from diffrop.runtime.run_status import clear_failed, write_failed


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


def slurm_job() -> dict[str, str]:
    """The SLURM job running this process ({} outside SLURM), so a run dir names its job and log (docs/slurm.md)."""
    env = os.environ
    if "SLURM_JOB_ID" not in env:
        return {}
    array = env.get("SLURM_ARRAY_JOB_ID")
    job = {"slurm_job_id": f"{array}_{env['SLURM_ARRAY_TASK_ID']}" if array else env["SLURM_JOB_ID"]}
    if env.get("SUBMITIT_EXECUTOR") == "slurm":  # hydra/launcher=slurm: submitit's per-task log file
        import submitit

        job["log"] = str(submitit.JobEnvironment().paths.stderr)
    return job | {"restarts": env.get("SLURM_RESTART_COUNT", "0")}


# where Lightning defines the SIGTERMException that ``stopped_by`` recognises
LIGHTNING_EXCEPTIONS = "lightning.pytorch.utilities.exceptions"


def stopped_by(err: BaseException) -> str | None:
    """``"SIGTERM"`` or ``"Ctrl-C"`` when a signal stopped the body, else None.

    Lightning turns SIGTERM into ``SIGTERMException`` after the current step; it catches Ctrl-C's
    ``KeyboardInterrupt`` inside ``Trainer.fit`` and raises ``SystemExit(1)`` in its place. This module does not
    import Lightning (runtime/ runs without it: pyproject.toml's contracts): only a process that loaded Lightning
    can raise its exception, so it is looked up among the loaded modules.
    """
    if isinstance(err, KeyboardInterrupt) or (
        isinstance(err, SystemExit) and isinstance(err.__context__, KeyboardInterrupt)
    ):
        return "Ctrl-C"
    exceptions = sys.modules.get(LIGHTNING_EXCEPTIONS)
    return "SIGTERM" if exceptions is not None and isinstance(err, exceptions.SIGTERMException) else None


# what a shell and SLURM expect from a process a signal stopped: 128 + the signal's number
STOP_EXIT = {"SIGTERM": 128 + signal.SIGTERM, "Ctrl-C": 128 + signal.SIGINT}
STOP_HEADLINE = {"SIGTERM": "SIGTERMException", "Ctrl-C": "KeyboardInterrupt"}


@contextlib.contextmanager
def guarded_run(
    run_dir: Path,
    *,
    rank: int = 0,
    multirun: bool = False,
    resume: Callable[[], str | None] | None = None,
    disposable: Callable[[], bool] | None = None,
) -> Iterator[Path | None]:
    """The run lifecycle every entry point shares, around its body; yields ``run_dir_lock``'s lock (None on rank > 0).

    - One process per run dir (``diffrop.runtime.run_lock``): a refused process prints one line and writes
      nothing, since the dir belongs to the live holder.
    - A failure writes ``<run_dir>/FAILED`` (its one-line reason, the SLURM job and log, the traceback) so that
      sweeps and tables show the run as failed; a body that ends normally removes an earlier attempt's FAILED.
      Only rank 0 writes: the ranks of a DDP job share the run dir.
    - An expected user error ends as ``error: <message>`` and exit code 1 (``stop_on_user_error``).
    - A stop (SIGTERM: pre-emption, ``scancel``, ``kill``; Ctrl-C) is not a crash: one line ``error: stopped by
      <signal>; <resume()>`` and exit code 128 + the signal (143, 130), and FAILED holds that line without a
      traceback. A crash prints ``resume()`` too, before its traceback.
    - ``resume()``: how to go on from what the run saved (train.py: the command with its directory), or None.
    - ``disposable()``: True when the dir was made for this command alone and holds nothing worth keeping (a
      failed start of a fresh timestamped run): it is removed instead of getting a FAILED, so failed starts
      leave no folder behind.
    - W&B is closed here, however the body ends, rather than in an exit hook.

    ``multirun``: one job of a Hydra multirun (``build.is_multirun()``): errors are re-raised instead of exiting,
    so that Hydra records the failed job and runs the others.
    """
    discard = False
    try:
        with contextlib.ExitStack() as stack:
            try:
                lock = stack.enter_context(run_dir_lock(run_dir, rank=rank))
            except RunDirLocked as err:
                stop(str(err), multirun)
                raise
            try:
                yield lock
            except BaseException as err:
                stopped = stopped_by(err)
                hint = resume() if resume is not None and rank == 0 else None
                discard = rank == 0 and disposable is not None and disposable()
                if rank == 0 and not discard:
                    if stopped:
                        headline = f"{STOP_HEADLINE[stopped]}: stopped by {stopped}"
                    else:
                        headline = (
                            user_error(err) or f"{type(err).__name__}: {err}"
                        )  # one line a table can show
                    fields = {k: v for k, v in slurm_job().items() if k != "restarts"}
                    write_failed(run_dir, headline, fields, with_traceback=stopped is None)
                if stopped:
                    print(f"error: stopped by {stopped}; {hint or 'no checkpoint yet, nothing to resume'}",
                          file=sys.stderr, flush=True)  # fmt: skip
                    sys.exit(STOP_EXIT[stopped])
                if hint and not user_error(err):  # a crash; a user error's message says what to fix
                    print(hint, file=sys.stderr, flush=True)
                stop_on_user_error(err, multirun)
                raise
            else:
                if rank == 0:
                    clear_failed(run_dir)
            finally:
                if wandb := sys.modules.get("wandb"):  # only if a W&B logger imported it
                    wandb.finish()
    finally:
        if discard:  # after the lock is released
            shutil.rmtree(run_dir, ignore_errors=True)
