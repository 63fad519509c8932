"""One process per run directory: every entry point holds it (``diffrop.runtime.entry.guarded_run``).

Two processes writing the same run dir (a re-submitted job, a second terminal, an orphan of a killed driver) both
write ``last.ckpt``, ``metrics.csv`` and the W&B run: a silently mixed run. ``run_dir_lock`` takes an advisory
``flock`` on ``<run dir>/.lock`` for as long as the run lives. The kernel drops a ``flock`` when its holder dies,
however it dies, so a SIGKILLed or pre-empted run never blocks its own resume (no stale-lock clean-up, unlike a
pid file). The file records the holder's pid and host, so the process refused can say whom it waits for.

``fcntl`` directly rather than the ``filelock`` package: filelock opens its lock file with ``O_TRUNC`` on every
try, which would wipe the holder's pid and host before the loser could read them. Linux/macOS only, as is the rest
of the launch tooling (SLURM, process groups).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".lock"


class RunDirLocked(RuntimeError):
    """Another live process holds the run directory."""


def holder(lock_file: Path) -> str:
    """``pid N on host H`` as the holder wrote it, or a placeholder when it has not written it yet."""
    try:
        text = lock_file.read_text().split()
    except OSError:
        text = []
    return f"pid {text[0]} on host {text[1]}" if len(text) >= 2 else "another process (pid not yet written)"


@contextlib.contextmanager
def run_dir_lock(run_dir: Path, rank: int = 0) -> Iterator[Path | None]:
    """Hold ``<run_dir>/.lock`` for the body; raise ``RunDirLocked`` at once if a live process holds it.

    Only rank 0 locks: the other ranks of a DDP job share the run dir with it by design (they yield None).
    """
    if rank != 0:
        yield None
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_file = run_dir / LOCK_NAME
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirLocked(
                f"run directory {run_dir} is in use by {holder(lock_file)} (lock {lock_file}); wait for that run "
                "to end or stop it, or pass another hydra.run.dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        yield lock_file
    finally:
        os.close(fd)  # releases the flock; the file stays (unlinking it would race with a process opening it)


def held_by(run_dir: Path) -> str | None:
    """``holder``'s description when a live process holds ``<run_dir>/.lock`` (e.g. a run still training), else None.

    Asks the kernel by taking the lock for an instant (``flock`` has no query): never blocks, never writes.
    """
    lock_file = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return holder(lock_file)
    finally:
        os.close(fd)  # also drops the shared lock, if taken
    return None
