"""Child processes of the drivers (reproduce, quickstart study, sample grids) die with their driver.

A plain ``subprocess.call`` leaves ``train.py`` / ``eval.py`` running when the driver is interrupted (Ctrl-C in
another terminal's ``kill``, a job scheduler's SIGTERM): the orphan keeps writing its run dir and collides with
the re-run. ``run_logged`` starts each child in a process group of its own (so the group can be signalled as a
whole: DDP workers, data-loader workers) and, whatever ends the wait (SIGINT, SIGTERM, SIGHUP, an exception),
sends the group SIGTERM (``train.py`` then writes ``last.ckpt``, so the re-run resumes), waits ``grace`` seconds,
then SIGKILLs what is left. On Linux the direct child also gets SIGTERM if the driver is SIGKILLed
(``PR_SET_PDEATHSIG``); nothing can forward a SIGKILL further than that, and the run-dir lock
(``diffrop.runtime.run_lock``) then names the straggler instead of letting it mix runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

GRACE_S = 30.0  # long enough for train.py to write its interrupt checkpoint
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1


class DriverInterrupted(SystemExit):
    """The driver got a termination signal: exit with 128 + signal, as a shell reports it, and no traceback
    (a SystemExit is not caught by ``except Exception``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


def parent_death_signal() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to SIGTERM the child when the driver dies; resolved before fork, so the hook
    itself only makes one C call (no Python locks taken between fork and exec)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """While the child runs, turn the termination signals into ``DriverInterrupted`` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise DriverInterrupted(signum)

    previous = {s: signal.signal(s, handler) for s in FORWARDED}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def stop_group(proc: subprocess.Popen, grace: float = GRACE_S) -> None:
    """SIGTERM the child's process group, then SIGKILL it after ``grace`` seconds if the child still runs."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
            if sig == signal.SIGTERM:  # the leader is gone; take down whatever of its group it left behind
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            return
        except subprocess.TimeoutExpired:
            continue


def run_logged(
    cmd: Sequence[str], log: Path, env: Mapping[str, str] | None = None, grace: float = GRACE_S
) -> int:
    """Run ``cmd`` with stdout and stderr to ``log``; its exit code. The child's whole process group is stopped
    if the wait ends any other way (then the signal becomes ``DriverInterrupted``, or the exception propagates).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f, _signals_raise():
        proc = subprocess.Popen(
            list(cmd),
            stdout=f,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            start_new_session=True,  # its own process group (and no terminal: the driver forwards Ctrl-C)
            preexec_fn=parent_death_signal(),
        )
        try:
            return proc.wait()
        except DriverInterrupted as err:
            stop_group(proc, grace)
            name = signal.Signals(err.signum).name
            print(
                f"{name}: stopped child pid {proc.pid} and its process group (log {log}); run the same command "
                "again to resume",
                file=sys.stderr,
            )
            raise
        finally:
            if proc.returncode is None:  # any other way out of the wait
                stop_group(proc, grace)


@dataclass
class Children:
    """The parallel trainings, each in its own process group (SIGTERMed if the driver dies).

    ``run_logged`` handles signals in the main thread only; here the waits happen in worker
    threads, so the main thread's handler stops every group itself (train.py checkpoints on SIGTERM, a re-run
    resumes) and leaves without waiting for the pool.
    """

    procs: set[subprocess.Popen] = field(default_factory=set)

    def run(self, cmd: list[str], log: Path, env: dict[str, str]) -> int:
        with log.open("w") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                    preexec_fn=parent_death_signal())  # fmt: skip
            self.procs.add(proc)
            try:
                return proc.wait()
            finally:
                self.procs.discard(proc)

    @classmethod
    def stopped_on_signals(cls) -> Children:
        """A new set whose ``stop_all`` handles SIGTERM, SIGINT and SIGHUP (call from the main thread)."""
        children = cls()
        for sig in FORWARDED:
            signal.signal(sig, children.stop_all)
        return children

    def stop_all(self, signum: int, _frame) -> None:
        for proc in list(self.procs):
            stop_group(proc)
        print(f"{signal.Signals(signum).name}: stopped the trainings; run the same command again to resume")
        os._exit(128 + signum)
