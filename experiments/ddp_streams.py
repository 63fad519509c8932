"""What shared training draws across DDP ranks cost: DDPM on 2 gloo ranks, per-rank streams vs shared streams.

    python experiments/ddp_streams.py                 # = make ddp-streams; resumable (finished runs are kept)
    python experiments/ddp_streams.py --render-only   # <out>.md again from <out>.json

Both arms run the real entry point, ``src/train.py trainer=ddp_cpu`` (2 processes, gloo), with the known-answer
benchmark's recipe and global batch (experiments/overlap_bench.py: data=gaussian_lt, model=mlp, 1,000 steps);
``callbacks.rank_streams.streams=shared`` makes rank 1 draw rank 0's t, eps and label drop, as every multi-GPU run
did before per-rank streams (docs/design.md section 7). The final EMA network gets the overlap benchmark's exact
scores (eps error against the closed-form eps*, tail-to-head leakage and KL of generated samples), and the arms
are compared paired by seed: a seed fixes the initial weights, the data order and the sampling noise.
Writes <out>.md and <out>.json (default experiments/results/ddp_streams.*).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from diffrop import build
from diffrop.paper.reading import write_keeping_reading
from diffrop.paper.study import difference, header, interval_cell, spread, table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
import overlap_bench as bench  # noqa: E402  (the recipe and the scores are the benchmark's)

ARMS = {"per_rank": "per-rank streams (now)", "shared": "shared streams (before)"}
METRICS = [("eps_err", "eps error"), ("leakage_tail@w0", "leakage tail→head"), ("kl_tail@w0", "KL tail"),
           ("kl_mean@w0", "KL mean")]  # fmt: skip
TRAINER = ("trainer=ddp_cpu", "callbacks.lr_monitor=null")


def recipe(args, arm: str, seed: int, run_dir: Path) -> list[str]:
    base = [o for o in bench.RECIPE if not o.startswith("trainer=")]
    return [*base, *TRAINER, f"callbacks.rank_streams.streams={arm}", f"trainer.max_steps={args.steps}",
            f"seed={seed}", f"data.seed={seed}", f"hydra.run.dir={run_dir}"]  # fmt: skip


def run_one(args, arm: str, seed: int, truth: list[float]) -> dict:
    """Train with 2 ranks (unless the result exists) and score the final EMA network; cached as JSON."""
    result_path = args.runs / arm / f"seed{seed}.json"
    key = {"steps": args.steps, "per_class": args.per_class, "eval_per_class": args.eval_per_class}
    if result_path.is_file() and (stored := json.loads(result_path.read_text())).get("key") == key:
        return stored
    run_dir = args.runs / arm / f"seed{seed}"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(REPO / "src" / "train.py"), *recipe(args, arm, seed, run_dir)],
                          cwd=REPO, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"{arm} seed {seed} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    train_s = time.monotonic() - start
    net, schedule, cfg, _ = build.net_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    mixture = build.build_datamodule(cfg).mixture
    scores = bench.score_net(net.float().eval(), schedule, mixture, seed, args, truth)
    result = {"key": key, "train_s": train_s, "wall_s": time.monotonic() - start, **scores}
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=1))
    return result


def summarise(results: dict[str, dict[int, dict]]) -> dict:
    flat = {arm: {s: bench.flat_scores(r, [0.0]) for s, r in runs.items()} for arm, runs in results.items()}
    out = {}
    for arm in results:
        out[arm] = {}
        for name, _ in METRICS:
            by_seed = {s: v[name] for s, v in flat[arm].items()}
            base = {s: v[name] for s, v in flat["per_rank"].items()}
            out[arm][name] = {**spread({str(s): v for s, v in sorted(by_seed.items())}),
                              "vs_per_rank": difference(by_seed, base) if arm != "per_rank" else None}  # fmt: skip
    return out


def render(summary: dict, meta: dict) -> str:
    rows = []
    for arm, label in ARMS.items():
        if arm not in summary:
            continue
        cells = []
        for name, _ in METRICS:
            col = summary[arm][name]
            digits = 4 if name.startswith(("eps", "leakage")) else 3
            text = f"{col['mean']:.{digits}f} ± {col['sd']:.{digits}f}"
            if col["vs_per_rank"] is not None:
                text += f"<br>{interval_cell(col['vs_per_rank'], True, digits)}"
            cells.append(text)
        rows.append([label, *cells])
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5, 6, 7])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--runs", type=Path, default=Path("logs/ddp_streams"))
    p.add_argument("--out", type=Path, default=Path("experiments/results/ddp_streams"))
    p.add_argument("--render-only", action="store_true", help="re-render <out>.md from <out>.json")
    args = p.parse_args(argv)
    if args.render_only:
        stored = json.loads(args.out.with_suffix(".json").read_text())
        write_keeping_reading(args.out.with_suffix(".md"), render(stored["arms"], stored["meta"]))
        return
    # the benchmark's scoring settings, at its defaults
    args.per_class, args.eval_per_class, args.mc_draws = 2000, 1000, 500_000
    args.sampler, args.sample_steps, args.guidance, args.train = "dpmpp2m", 30, [0.0], []
    torch.set_num_threads(1)
    start = time.monotonic()
    facts = bench.mixture_facts(args)
    results: dict[str, dict[int, dict]] = {}
    for seed in args.seeds:  # seed-major: early results are paired
        for arm in ARMS:
            r = results.setdefault(arm, {})[seed] = run_one(args, arm, seed, facts["true_head_share"])
            s = bench.flat_scores(r, [0.0])
            print(f"{arm} seed {seed}: eps_err {s['eps_err']:.4f}, leakage {s['leakage_tail@w0']:+.4f}, "
                  f"KL tail {s['kl_tail@w0']:.3f} ({r['wall_s']:.0f} s)", flush=True)  # fmt: skip
    run_times = [r["wall_s"] for runs in results.values() for r in runs.values()]
    meta = {"seeds": args.seeds, "steps": args.steps, "batch_size": facts["batch_size"],
            "wall_s": time.monotonic() - start, "runs_s": sum(run_times),
            "run_s_median": statistics.median(run_times), "cpus": len(os.sched_getaffinity(0))}  # fmt: skip
    summary = summarise(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "arms": summary}, indent=1))
    write_keeping_reading(args.out.with_suffix(".md"), render(summary, meta))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
