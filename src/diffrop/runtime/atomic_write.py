"""Files that are replaced whole or not at all, and a full disk reported as such.

Every result file (checkpoints, sample shards, reference features, results.json) is written to a temporary file
beside its target, fsynced and renamed over the target with ``os.replace`` (atomic on POSIX): a crash, SIGKILL or
full disk during the write leaves the previous file intact and no temporary file behind.

A full disk otherwise surfaces in the least helpful form: ``torch.save`` turns the ``ENOSPC`` of its file write
into ``RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos ...``. ``atomic_write`` looks for
``ENOSPC`` / ``EDQUOT`` anywhere in the failure's exception chain and raises ``DiskFullError`` instead: one line
with the path and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from diffrop.runtime.entry import UserError

FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
TEMP_NAME = re.compile(
    r"^\..+\.\d+-[0-9a-f]{8}\.tmp$"
)  # .<name>.<pid>-<8 hex>.tmp, as atomic_write names them


class DiskFullError(OSError, UserError):
    """A write failed because the filesystem (or the user's quota) is full."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno 28] " prefix
        return str(self.strerror)


def disk_full_cause(err: BaseException) -> OSError | None:
    """The ENOSPC / EDQUOT OSError behind ``err`` (itself, its cause or context), if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in FULL:
            return err
        err = err.__cause__ or err.__context__
    return None


def _free(directory: Path) -> str:
    try:
        return f"{shutil.disk_usage(directory).free / 2**20:.1f} MiB free there"
    except OSError:
        return "free space unknown"


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on a clean exit it replaces ``path`` (durably).

    On any failure the temporary file is removed and ``path`` keeps its previous content; a full disk raises
    ``DiskFullError`` naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")  # TEMP_NAME
    try:
        # 0o666 through the umask, as open() would; tempfile.mkstemp would make every result file private (0600)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # a full disk may only show here (delayed allocation)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if (full := disk_full_cause(err)) is not None:
            raise DiskFullError(
                full.errno,
                f"{FULL[full.errno]} while writing {path} ({_free(path.parent)}); the previous file is intact. "
                "Free space on that filesystem or write the run elsewhere (hydra.run.dir=...)",
            ) from err
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (not possible on every filesystem)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Delete the temporary files that writers killed mid-write (SIGKILL, power loss) left in ``directory``.

    Only safe while no live process writes there: src/train.py calls it on its checkpoint folder after taking the
    run-dir lock (``diffrop.runtime.run_lock``). Returns what it removed.
    """
    directory = Path(directory)
    stale = [p for p in directory.iterdir() if TEMP_NAME.match(p.name)] if directory.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
