"""Child-process measurements of benchmarks/bench.py, run as ``python benchmarks/_worker.py <what> <args...>``.

A fresh process, so that its peak memory (VmHWM; CUDA peak stats) holds this measurement only. Prints one JSON line.

    python benchmarks/_worker.py precision_recall <N> <chunk>
"""

from __future__ import annotations

import json
import sys
import time

import torch


def rss(field: str) -> int:
    """A /proc/self/status field in kB (Linux): VmRSS now, VmHWM the peak."""
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith(field)).split()[1])


def precision_recall(n: int, chunk: int) -> dict:
    """Seconds and peak extra memory of improved precision / recall on two N x 2048 float32 feature sets."""
    from diffrop.evaluation.metrics import precision_recall as pr

    g = torch.Generator().manual_seed(0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    real, fake = (torch.randn(n, 2048, generator=g).to(dev) for _ in range(2))
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the peak (VmHWM) to the current RSS
    base = rss("VmRSS")
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    pr(real, fake, k=5, chunk=chunk, dtype=torch.float32)
    if dev == "cuda":
        torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() - start) if dev == "cuda" else (rss("VmHWM") - base) * 1024
    return {"seconds": sec, "peak_extra_bytes": peak}


WORKERS = {"precision_recall": lambda argv: precision_recall(int(argv[0]), int(argv[1]))}


def main(argv: list[str]) -> int:
    print(json.dumps(WORKERS[argv[0]](argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
