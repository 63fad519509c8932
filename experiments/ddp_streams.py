"""What shared training draws across DDP ranks cost: DDPM on 2 gloo ranks, per-rank streams vs shared streams.

    python experiments/ddp_streams.py                 # = make ddp-streams; resumable (finished runs are kept)
    python experiments/ddp_streams.py --render-only   # <out>.md again from <out>.json

Both arms run the real entry point, ``src/train.py trainer=ddp_cpu`` (2 processes, gloo), with the known-answer
benchmark's recipe and global batch (experiments/overlap_bench.py: data=gaussian_lt, model=mlp, 1,000 steps);
``callbacks.rank_streams.streams=shared`` makes rank 1 draw rank 0's t, eps and label drop, as every multi-GPU run
did before per-rank streams (docs/design.md section 7). The final EMA network gets the overlap benchmark's exact
scores (eps error against the closed-form eps*, tail-to-head leakage and KL of generated samples), and the arms
are compared paired by seed: a seed fixes the initial weights, the data order and the sampling noise.
Writes <out>.md and <out>.json (default experiments/results/ddp_streams.*) through diffrop.paper.study's framework.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from diffrop import build
from diffrop.paper import study
from diffrop.paper.mixture_scores import flat_scores, score_net
from diffrop.paper.study import Arm, header, interval_cell, table
from diffrop.runtime.children import Children

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
import mixture_recipe as recipe  # noqa: E402  (the overlap benchmark's recipe, facts, flags and progress line)

EIGHT = tuple(range(8))
ARMS = [Arm("per_rank", "per-rank streams (now)", "per_rank", seeds=EIGHT),
        Arm("shared", "shared streams (before)", "shared", seeds=EIGHT)]  # fmt: skip
METRICS = [("eps_err", "eps error"), ("leakage_tail@w0", "leakage tail→head"), ("kl_tail@w0", "KL tail"),
           ("kl_mean@w0", "KL mean")]  # fmt: skip
TRAINER = ("trainer=ddp_cpu", "callbacks.lr_monitor=null")


def overrides(args, arm: str, seed: int) -> list[str]:
    base = [o for o in recipe.RECIPE if not o.startswith("trainer=")]
    return [*base, *TRAINER, f"callbacks.rank_streams.streams={arm}", *args.train, f"trainer.max_steps={args.steps}",
            f"seed={seed}", f"data.seed={seed}"]  # fmt: skip


def prepare(args, arms: list[Arm]) -> tuple[dict, dict]:
    """The benchmark's data facts (its scoring flags, at its defaults unless given)."""
    facts, context = recipe.prepare(args, arms)
    torch.set_num_threads(1)
    context["children"] = Children.stopped_on_signals()  # the 2-rank trainings stop with this driver
    return {"batch_size": facts["batch_size"], "cpus": len(os.sched_getaffinity(0))}, context


def run_one(arm: Arm, seed: int, args, context: dict) -> dict:
    """Train with 2 ranks (unless the result exists) and score the final EMA network; cached as JSON."""
    key = {"steps": args.steps, "per_class": args.per_class, "eval_per_class": args.eval_per_class}
    key |= {"train": args.train} if args.train else {}
    run_dir = args.runs / arm.slug / f"seed{seed}"

    def fit_and_score() -> dict:
        start = time.monotonic()
        cmd = [sys.executable, str(REPO / "src" / "train.py"), *overrides(args, arm.slug, seed, run_dir)]
        proc = subprocess.run(
            cmd, cwd=REPO, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"}
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{arm.slug} seed {seed} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        train_s = time.monotonic() - start
        net, schedule, cfg, _ = build.net_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
        mixture = build.build_datamodule(cfg).mixture
        scores = score_net(net.float().eval(), schedule, mixture, seed, args, context["truth"])
        return {"train_s": train_s, "wall_s": time.monotonic() - start, **scores}

    return study.cached(run_dir.with_suffix(".json"), key, fit_and_score)


def summarise(results: dict[str, dict[int, dict]], args=None) -> dict:
    flat = {arm: {s: flat_scores(r, [0.0]) for s, r in runs.items()} for arm, runs in results.items()}
    out = {}
    for arm in (a.slug for a in ARMS if a.slug in results):
        out[arm] = {}
        for name, _ in METRICS:
            base = {s: v[name] for s, v in flat["per_rank"].items()} if arm != "per_rank" else None
            out[arm][name] = study.column({s: v[name] for s, v in flat[arm].items()}, {"vs_per_rank": base})
    return out


def render(body: dict, args=None) -> str:
    summary, meta = body["arms"], body["meta"]
    rows = []
    for arm in ARMS:
        if arm.slug not in summary:
            continue
        cells = []
        for name, _ in METRICS:
            col = summary[arm.slug][name]
            digits = 4 if name.startswith(("eps", "leakage")) else 3
            text = f"{col['mean']:.{digits}f} ± {col['sd']:.{digits}f}"
            if col["vs_per_rank"] is not None:
                text += f"<br>{interval_cell(col['vs_per_rank'], True, digits)}"
            cells.append(text)
        rows.append([arm.label, *cells])
    lines = [
        "# Shared vs per-rank training draws on 2 DDP ranks (DDPM, Gaussian mixture with exact answers)",
        "",
        f"`python experiments/ddp_streams.py`: `src/train.py trainer=ddp_cpu` (2 gloo processes), global batch "
        f"{meta['batch_size']}, {meta['steps']} steps, seeds {meta['seeds']}; mean ± sd over seeds, and under the "
        "shared arm its difference to per-rank streams paired by seed with the 95% interval (** better, _ worse: "
        f"the interval excludes 0). {len(meta['seeds']) * len(ARMS)} runs (training 2 ranks and scoring): "
        f"{meta['runs_s'] / 60:.1f} min in all, {meta['run_s_median']:.0f} s median, on {meta['cpus']} CPU cores.",
        "",
        *table(["arm", *(header(h, True) for _, h in METRICS)], rows),
        "",
    ]
    return "\n".join(lines)


STUDY = study.Study("ddp_streams", __doc__, ARMS, run_one, summarise, render, prepare=prepare, progress=recipe.progress, options=recipe.options,
                    done=lambda arm, seed, args: (args.runs / arm.slug / f"seed{seed}.json").is_file(),
                    base="per_rank")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    study.main(STUDY, argv)


if __name__ == "__main__":
    main()
