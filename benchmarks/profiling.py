"""Section profile: Lightning training steps under ``torch.profiler``, a Chrome trace, and where the step's wall
time goes (GPU kernels or CPU ops, the GPU idle while the host dispatches, host-only time)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
from rich.console import Console

from benchmarks.harness import config, fit, train_cases
from benchmarks.timing import CUDA, device_slug, sync

console = Console(width=140)


def merge(intervals: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Union of [start, end) intervals as sorted disjoint intervals."""
    out: list[tuple[float, float]] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def covered(intervals: Sequence[tuple[float, float]], windows: Sequence[tuple[float, float]]) -> float:
    """Length of the union of ``intervals`` inside the union of ``windows``."""
    total, ws = 0.0, merge(windows)
    for start, end in merge(intervals):
        for w0, w1 in ws:
            total += max(0.0, min(end, w1) - max(start, w0))
    return total


DEVICE_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}  # work on the GPU's timeline
HOST_OP_CATS = {"cpu_op", "cuda_runtime", "cuda_driver"}  # the host inside an ATen op or a CUDA API call


def trace_breakdown(trace: Mapping) -> dict:
    """Where the profiled steps' wall time goes, from a Chrome trace of ``torch.profiler`` (``traceEvents``).

    The steps are the ``ProfilerStep#k`` spans (batch end to batch end, each ending in a device sync: the whole loop).
    Their wall time W is split into three exclusive parts, so the fractions sum to 1:
    ``compute`` = the GPU runs a kernel / memcpy / memset (CUDA), or the host is inside an ATen op (CPU run);
    ``dispatch_gap`` = the GPU is idle while the host is inside an op or a CUDA API call (launch and dispatch
    overhead: the GPU waits for work being issued); 0 on a CPU run; ``host_outside_ops`` = neither: Python,
    Lightning hooks, logging, data loading, idle. ``host_in_ops`` (not part of the sum) is the share of W the host
    spends inside ops / CUDA calls (cuda*Synchronize excluded; an op that blocks, like ``.item()``, still counts),
    overlapping GPU work or not: near 1 with a sizeable ``dispatch_gap`` means the host is the bottleneck.
    """
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X" and "dur" in e]
    steps = [  # the host-side spans (a CUDA trace repeats them on the GPU as gpu_user_annotation)
        (e["ts"], e["ts"] + e["dur"])
        for e in events
        if e.get("cat") == "user_annotation" and str(e.get("name", "")).startswith("ProfilerStep#")
    ]
    if not steps:
        raise ValueError("no ProfilerStep# spans in the trace: profile with a schedule and call step()")
    device = [(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") in DEVICE_CATS]
    host = [  # a cuda*Synchronize call is the host waiting for the GPU, not dispatching
        (e["ts"], e["ts"] + e["dur"])
        for e in events
        if e.get("cat") in HOST_OP_CATS and "Synchronize" not in str(e.get("name", ""))
    ]
    wall = covered(steps, steps)
    compute_iv = device if device else host
    compute = covered(compute_iv, steps)
    busy = covered([*compute_iv, *host], steps)  # compute or host in ops
    return {
        "steps": len(steps),
        "step_ms": wall / len(steps) / 1e3,  # trace times are microseconds
        "timeline": "gpu" if device else "cpu",
        "compute": compute / wall,
        "dispatch_gap": (busy - compute) / wall,
        "host_outside_ops": (wall - busy) / wall,
        "host_in_ops": covered(host, steps) / wall,
    }


class ProfileSteps(L.Callback):
    """Profile training steps ``skip`` .. ``skip + steps - 1`` with ``torch.profiler`` (CPU, plus CUDA when there is
    a GPU); one ``ProfilerStep#k`` span per step, from batch end to batch end after a device sync."""

    def __init__(self, trace_path: Path, skip: int, steps: int) -> None:
        from torch.profiler import ProfilerActivity, profile, schedule

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if CUDA else [])
        self.trace_path = trace_path
        self.prof = profile(
            activities=activities,
            schedule=schedule(wait=max(0, skip - 1), warmup=1 if skip else 0, active=steps, repeat=1),
            on_trace_ready=lambda p: p.export_chrome_trace(str(trace_path)),
            record_shapes=False,
            with_stack=False,
        )

    def on_train_start(self, trainer, module) -> None:
        self.prof.start()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        sync()
        self.prof.step()

    def on_train_end(self, trainer, module) -> None:
        sync()
        self.prof.stop()


def profile_step(cfg, trace_path: Path, skip: int, steps: int) -> tuple[dict, str]:
    """Profile ``steps`` Lightning steps after ``skip`` unprofiled ones; (breakdown, top-ops table)."""
    profiler = ProfileSteps(trace_path, skip, steps)
    fit(cfg, profiler)
    opener = gzip.open if trace_path.suffix == ".gz" else open
    with opener(trace_path, "rt") as f:
        breakdown = trace_breakdown(json.load(f))
    sort = "self_cuda_time_total" if CUDA else "self_cpu_time_total"
    table = profiler.prof.key_averages().table(sort_by=sort, row_limit=12, max_name_column_width=60)
    return breakdown, table


def bench_profile(args) -> list[dict]:
    """The Lightning training step under ``torch.profiler``: a Chrome trace (open in https://ui.perfetto.dev or
    chrome://tracing) and the breakdown of ``trace_breakdown``, plus the top kernels / ops."""
    model, size, batch = train_cases(args)[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    default = out / f"trace_{device_slug()}_{model}_b{batch}.json.gz"
    trace = Path(args.profile_trace) if args.profile_trace else default
    steps = args.profile_steps
    cfg = config(model, size, batch, f"trainer.max_steps={args.warmup + steps + 1}")
    breakdown, table = profile_step(cfg, trace, args.warmup, steps)
    console.print(table, soft_wrap=True, markup=False, highlight=False)
    ms = breakdown["step_ms"]
    parts = ", ".join(
        f"{k} {100 * breakdown[k]:.1f} % ({ms * breakdown[k]:.2f} ms)"
        for k in ("compute", "dispatch_gap", "host_outside_ops")
    )
    console.print(f"profiled step {ms:.2f} ms ({breakdown['timeline']} timeline): {parts}; trace {trace}")
    return [{"model": model, "image_size": size, "batch": batch, **breakdown, "trace": trace.name}]
