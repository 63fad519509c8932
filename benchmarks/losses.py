"""Section losses: the Lightning step of each loss relative to DDPM (eq12 / batch PCL pairs: < 3 % over DDPM)."""

from __future__ import annotations

import statistics

from benchmarks.harness import run_steps, train_cases
from benchmarks.timing import interleaved, paired_ratio

# name -> overrides; PCL's default pairing (partner) adds one forward like CBDM's, eq12 / batch pairing add none
LOSSES = {
    "ddpm": ("loss=ddpm",),
    **{f"pcl_{phi}": (f"loss=pcl_{phi}",) for phi in ("exp", "hinge", "neg_l2", "recip")},
    "pcl_exp_eq12": ("loss=pcl_exp", "loss.terms.pcl.pairing=eq12"),
    "pcl_exp_batch": ("loss=pcl_exp", "loss.terms.pcl.pairing=batch"),
    "feed_pcl_exp": (
        "loss=feed_pcl_exp",
    ),  # the partner forward also in the DDPM loss: the same two forwards
    "cbdm": ("loss=cbdm",),
    "cbdm_pcl_exp": ("loss=cbdm_pcl_exp",),
}
ONE_FORWARD = ("pcl_exp_eq12", "pcl_exp_batch")  # target: < 3 % over DDPM


def bench_losses(args) -> list[dict]:
    model, size, batch = train_cases(args)[0]
    secs = interleaved(
        {name: lambda o=over: run_steps(args, model, size, batch, *o) for name, over in LOSSES.items()},
        args.rounds,
    )
    return [
        {
            "loss": k,
            "model": model,
            "batch": batch,
            "ms": 1e3 * statistics.median(v),
            "ratio_vs_ddpm": paired_ratio(v, secs["ddpm"]),
            "target_ratio": 1.03 if k in ONE_FORWARD else None,
            "rounds": args.rounds,
        }
        for k, v in secs.items()
    ]
