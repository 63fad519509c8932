"""Section compile: the Lightning step eager vs ``model.compile=true`` (each round compiles afresh)."""

from __future__ import annotations

import statistics

from benchmarks.harness import run_steps, train_cases
from benchmarks.timing import interleaved, paired_ratio


def bench_compile(args) -> list[dict]:
    """Eager vs ``model.compile=true`` Lightning steps; compilation (and any recompile) falls in the warm-up."""
    model, size, batch = train_cases(args)[0]
    warmup = max(args.warmup, args.compile_warmup)
    secs = interleaved(
        {
            mode: lambda m=mode: run_steps(args, model, size, batch, f"model.compile={m}", warmup=warmup)
            for mode in ("false", "true")
        },
        args.rounds,
    )
    ratio = paired_ratio(secs["true"], secs["false"])
    return [
        {
            "model": model,
            "batch": batch,
            "eager_ms": 1e3 * statistics.median(secs["false"]),
            "compiled_ms": 1e3 * statistics.median(secs["true"]),
            "compiled_vs_eager": ratio,
            "images_per_s_compiled": batch / statistics.median(secs["true"]),
            "rounds": args.rounds,
        }
    ]
