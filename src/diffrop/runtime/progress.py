"""Progress lines that reach a log file, for the stages that can take minutes (generation, feature extraction,
scoring, sample grids) and for training's ``LogProgress`` (``diffrop.training.progress_bars``).

Rich's live bar redraws one terminal line; written to a file (a SLURM job's log, ``nohup``, the reproduce driver's
``<runs>/logs/*.log``) it shows nothing until the run ends. ``track`` writes a plain line every N seconds there
instead, ``emit`` writes one line through logging, and ``ticking`` says a silent stage is still alive.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import TypeVar

from rich.console import Console
from rich.progress import Progress

log = logging.getLogger(__name__)
T = TypeVar("T")

SILENCE_S = 30.0  # no stage that can take minutes goes longer without a line (``ticking``)
_last_line = [time.monotonic()]  # when ``emit`` last wrote


def emit(line: str) -> None:
    """Through logging where a handler is configured (Hydra: stdout + the run's log file), else to stdout."""
    if log.isEnabledFor(logging.INFO) and log.hasHandlers():
        log.info(line)
    else:
        print(line, flush=True)
    _last_line[0] = time.monotonic()


@contextlib.contextmanager
def ticking(status: Callable[[], str], enabled: bool = True) -> Iterator[None]:
    """Inside the block, ``<status()> | still running, elapsed ...`` whenever no line was emitted for ``SILENCE_S``;
    the time is that stage's (since ``status()`` last changed), so scoring's stages each count from their start.

    Whatever the block is doing (one k-means run, one batch of a 1,000-step sampler, a sample grid, a first feature
    batch), a user reading the log sees it is alive at least every ``SILENCE_S``; loops that report their own
    progress (``track``, ``LogProgress``) keep it quiet. A daemon thread, from rank 0 only.
    """
    if not enabled or process_rank() != 0:
        yield
        return
    done = threading.Event()

    def beat() -> None:
        label, start = status(), time.monotonic()
        while not done.wait(min(SILENCE_S, 1.0)):
            now = time.monotonic()
            if (current := status()) != label:  # a new stage inside the block: its own clock
                label, start = current, now
            if now - _last_line[0] >= SILENCE_S:
                emit(f"{label} | still running, elapsed {timedelta(seconds=round(now - start))}")

    thread = threading.Thread(target=beat, name="progress-ticking", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def process_rank() -> int:
    """This process's global rank under torchrun / SLURM (0 when not distributed)."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def track(
    items: Iterable[T],
    description: str,
    total: int | None = None,
    *,
    disable: bool = False,
    rank: int | None = None,
    every_n_seconds: float = 30.0,
    size: Callable[[T], int] | None = None,
) -> Iterator[T]:
    """Progress over a loop (generation, feature extraction), from rank 0 only (``rank``: default from the env).

    rich's live bar on a terminal; elsewhere (a log file) a plain line ``<description>: 12/50 (24%) | elapsed ... |
    ETA ...`` every ``every_n_seconds`` and at the end, through ``emit``. ``size(item)``: how many units (images)
    an item counts for, ``total`` then in those units; default 1 per item.
    """
    if disable or (process_rank() if rank is None else rank) != 0:
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    size = size or (lambda item: 1)
    console = Console()
    if console.is_terminal or console.is_jupyter:
        with Progress(*Progress.get_default_columns(), console=console) as bar:
            task = bar.add_task(description, total=total)
            for item in items:
                yield item
                bar.advance(task, size(item))
        return
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += size(item)
        now = time.monotonic()
        if now - last >= every_n_seconds or done == total:
            emit(track_line(description, done, total, now - start))
            last = now


def track_line(description: str, done: int, total: int | None, elapsed: float) -> str:
    parts = [
        f"{description}: {done}/{total} ({100 * done / total:.0f}%)" if total else f"{description}: {done}"
    ]
    parts.append(f"elapsed {timedelta(seconds=round(elapsed))}")
    if total and done:
        parts.append(f"ETA {timedelta(seconds=round(elapsed / done * max(total - done, 0)))}")
    return " | ".join(parts)
