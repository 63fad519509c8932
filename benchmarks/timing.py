"""How the benchmarks measure: device-synchronised wall time, and interleaved rounds compared by paired ratios.

A ratio is the median over rounds of the paired per-round ratios, so that the drift of a shared machine (another job
starting, thermal limits) hits both sides of a pair alike and cancels.
"""

from __future__ import annotations

import platform
import re
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

CUDA = torch.cuda.is_available()


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def median_time(fn: Callable[[], object], warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes (device work included)."""
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def interleaved(measures: Mapping[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run ``rounds`` rounds of every measurement in order (A B C A B C ...); each returns seconds.

    Returns {name: [seconds of round 0, 1, ...]}: compare two entries with ``paired_ratio``, not with a ratio
    of medians, so that a load change between rounds cancels.
    """
    if rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {rounds}")
    secs: dict[str, list[float]] = {name: [] for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            secs[name].append(measure())
    return secs


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over rounds of a_i / b_i (the same round's two measurements)."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def device_name() -> str:
    if CUDA:
        return torch.cuda.get_device_name()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {torch.get_num_threads()} thread(s)"


def device_slug() -> str:
    """``device_name()`` as a file name: the results file and the default trace are named by it."""
    return re.sub(r"[^a-z0-9]+", "_", device_name().lower()).strip("_")
