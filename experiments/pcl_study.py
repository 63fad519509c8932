"""Does PCL do anything? A powered CPU study on digits_lt: DDPM, DDPM + PCL over a tau0 grid for both reductions,
CBDM and CBDM + PCL, several seeds, each model sampled at w = 0 and at its recipe guidance.

    python experiments/pcl_study.py                      # = make pcl-study; resumable (finished runs are skipped)
    python experiments/pcl_study.py --seeds 0 --arms ddpm pcl_alg1_tau1    # a subset

Every arm trains the quickstart model (tiny UNet, 8x8 digits, imbalance 0.1, batch 64, lr 1e-3) for 1,000 steps with the same
seed, batch order and initial weights per seed; only the loss differs. Samples: DDIM-50, ``--per-class`` per class,
the same initial noise for every arm of a seed (common random numbers: differences are less noisy than the
values). Scores live in a digits classifier's feature space (diffrop.paper.digits_probe): per-shot FID and recall,
accuracy, confusion (share of class-c samples assigned to another class) and to_head (assigned to a many-shot
class). ``grad_ratio`` is the median of ``train/pcl/grad_ratio`` over the second half of training.
Writes <out>.md, <out>.json and <out>.png (default experiments/results/pcl_study.*).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from diffrop.build import net_from_checkpoint
from diffrop.data.datasets import load_digits, resize_uint8
from diffrop.data.longtail import longtail_counts, shot_groups
from diffrop.diffusion.sampling import ddim_sample, to_uint8
from diffrop.paper.cells import training_state
from diffrop.paper.digits_probe import PROBE_SIZE, load_or_train_probe, probe_outputs, score_by_group
from diffrop.runtime.children import parent_death_signal, stop_group

REPO = Path(__file__).resolve().parents[1]
RECIPE_W = {"ddpm": 0.8, "cbdm": 1.6}  # CBDM's README: DDPM 0.8, CBDM 1.6
ALG1_TAU0 = (0.01, 0.03, 0.1, 1, 3, 10, 30)  # per-anchor sum, batch 64: from negligible to dominant
PAIRS_MEAN_TAU0 = (100,)  # mean over pairs: ~56 partners per anchor at batch 64, so ~ alg1 at tau0 / 56
SAMPLE_STEPS = 50
PCL = ["loss.terms.pcl.phi=exp", "tau=exp_decay"]


@dataclass(frozen=True)
class Arm:
    slug: str
    label: str
    family: str  # ddpm | cbdm: picks the recipe guidance
    overrides: tuple[str, ...]
    reduction: str | None = None
    tau0: float | None = None
    temperature: float | None = None
    seeds: tuple[int, ...] = (0, 1, 2)


def pcl_arm(
    reduction: str,
    tau0: float,
    base: str = "ddpm",
    temperature: float = 0.5,
    seeds: tuple[int, ...] = (0, 1, 2),
) -> Arm:
    short = {"algorithm1_sum": "alg1", "pairs_mean": "pmean"}[reduction]
    loss = "pcl_exp" if base == "ddpm" else "cbdm_pcl_exp"
    temp = "" if temperature == 0.5 else f"_temp{temperature:g}"
    return Arm(
        f"{'' if base == 'ddpm' else 'cbdm_'}pcl_{short}_tau{tau0:g}{temp}",
        f"{base.upper()} + PCL {short} tau0={tau0:g}" + (f", temperature {temperature:g}" if temp else ""),
        base,
        (
            f"loss={loss}",
            *PCL,
            f"tau.temperature={temperature}",
            f"tau.tau0={tau0}",
            f"loss.terms.pcl.reduction={reduction}",
        ),
        reduction,
        tau0,
        temperature,
        seeds,
    )


# Two seeds where the effect is many times the seed spread (a 2-core session's budget; n is in the table).
TWO = (0, 1)
ARMS = [
    Arm("ddpm", "DDPM", "ddpm", ("loss=ddpm",)),
    *(pcl_arm("algorithm1_sum", t, seeds=(0, 1, 2) if t <= 1 else TWO) for t in ALG1_TAU0),
    *(pcl_arm("pairs_mean", t, seeds=TWO) for t in PAIRS_MEAN_TAU0),
    pcl_arm(
        "algorithm1_sum", 1, temperature=0.1, seeds=TWO
    ),  # PCL on low-noise steps only (tau(T) = e^-10 tau0)
    Arm("cbdm", "CBDM", "cbdm", ("loss=cbdm",)),
    pcl_arm("algorithm1_sum", 1, base="cbdm", seeds=TWO),
    # why does CBDM trail DDPM here? the regulariser's weight
    Arm("cbdm_weight0.1", "CBDM, weight 0.1", "cbdm", ("loss=cbdm", "loss.terms.cbdm.weight=0.1"), seeds=TWO),
]


@dataclass
class Children:
    """The parallel trainings, each in its own process group (diffrop.runtime.children: SIGTERMed if the study dies).

    ``diffrop.runtime.children.run_logged`` handles signals in the main thread only; here the waits happen in worker
    threads, so the main thread's handler stops every group itself (train.py checkpoints on SIGTERM, a re-run
    resumes) and leaves without waiting for the pool.
    """

    procs: set[subprocess.Popen] = field(default_factory=set)

    def run(self, cmd: list[str], log: Path, env: dict[str, str]) -> int:
        with log.open("w") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                    preexec_fn=parent_death_signal())  # fmt: skip
            self.procs.add(proc)
            try:
                return proc.wait()
            finally:
                self.procs.discard(proc)

    def stop_all(self, signum: int, _frame) -> None:
        for proc in list(self.procs):
            stop_group(proc)
        print(f"{signal.Signals(signum).name}: stopped the trainings; run the same command again to resume")
        os._exit(128 + signum)


def train(arm: Arm, seed: int, args, children: Children) -> Path:
    run = args.runs / arm.slug / f"seed{seed}"
    if training_state(run, args.steps)[0] == "done":
        return run
    run.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(REPO / "src" / "train.py"), "experiment=quickstart", *arm.overrides,
           f"trainer.max_steps={args.steps}", f"seed={seed}", f"hydra.run.dir={run}", "logger=csv",
           "callbacks.sample_grid.every_n_steps=0", "callbacks.progress_bar=null"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // args.jobs)))
    start = time.monotonic()
    rc = children.run(cmd, run.with_suffix(".log"), env)
    if rc:
        raise RuntimeError(
            f"training {arm.slug} seed {seed} failed (exit {rc}); see {run.with_suffix('.log')}"
        )
    print(f"  trained {arm.slug} seed {seed} in {time.monotonic() - start:.0f} s", flush=True)
    return run


def train_log_summary(run: Path) -> dict[str, float]:
    """Medians over the second half of training of the logged PCL diagnostics (absent ones left out)."""
    if not (run / "metrics.csv").is_file():  # a run shorter than one logging interval
        return {}
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for key in ("grad_ratio", "d_between", "d_within"):
        values = [float(r[f"train/pcl/{key}"]) for r in rows if r.get(f"train/pcl/{key}")]
        if values:
            out[key] = statistics.median(values[len(values) // 2 :])
    return out


def score(run: Path, arm: Arm, seed: int, args, probe, real, groups) -> dict:
    """Scores of one trained run at w = 0 and at its recipe w, cached in <run>/study_scores.json."""
    cache = run / "study_scores.json"
    key = {"per_class": args.per_class, "steps": SAMPLE_STEPS, "w": [0.0, RECIPE_W[arm.family]]}
    if cache.is_file() and (stored := json.loads(cache.read_text())).get("key") == key:
        return stored
    net, schedule, cfg, _ = net_from_checkpoint(run / "checkpoints" / "last.ckpt")
    size = int(cfg.data.image_size)
    y = torch.arange(10).repeat_interleave(args.per_class)
    out = {"key": key, "train": train_log_summary(run), "scores": {}}
    for w in key["w"]:
        gen = torch.Generator().manual_seed(1000 + seed)  # the same noise for every arm of this seed
        x = ddim_sample(
            net, schedule, y, (len(y), 3, size, size), steps=SAMPLE_STEPS, guidance=w, generator=gen
        )
        feats, preds = probe_outputs(probe, resize_uint8(to_uint8(x), PROBE_SIZE))
        out["scores"][f"{w:g}"] = score_by_group(real, (feats, y, preds), groups)
    cache.write_text(json.dumps(out, indent=1))
    return out


# --- aggregation -----------------------------------------------------------------------------------------
COLUMNS = [  # (group, metric, header, lower is better)
    ("many", "fid", "FID many", True),
    ("med", "fid", "FID med", True),
    ("few", "fid", "FID few", True),
    ("few", "recall", "recall few", False),
    ("many", "acc", "acc many %", False),
    ("few", "acc", "acc few %", False),
    ("few", "to_head", "few→head %", True),
]


def values(results: dict, slug: str, setting: str, group: str, metric: str) -> list[float]:
    """One metric over the seeds of one arm; ``setting`` is "w0" or "recipe"."""
    out = []
    for entry in results.get(slug, {}).values():
        w = "0" if setting == "w0" else next(k for k in entry["scores"] if k != "0")
        out.append(entry["scores"][w][group][metric])
    return out


def welch(a: list[float], b: list[float]) -> tuple[float, float, float] | None:
    """(mean(a) - mean(b), 95% CI low, high) by Welch's t-test; None with fewer than 2 values on a side."""
    if len(a) < 2 or len(b) < 2:
        return None
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    return float(np.mean(a) - np.mean(b)), float(ci.low), float(ci.high)


def summarise(results: dict) -> dict:
    """Per arm and setting: mean, sd and the Welch difference to DDPM of every column."""
    out = {}
    for arm in ARMS:
        if arm.slug not in results:
            continue
        entry = {"label": arm.label, "seeds": sorted(results[arm.slug]), "reduction": arm.reduction, "temperature": arm.temperature,
                 "tau0": arm.tau0, "family": arm.family}  # fmt: skip
        ratios = [e["train"].get("grad_ratio") for e in results[arm.slug].values()]
        if ratios and None not in ratios:
            entry["grad_ratio"] = {
                "mean": float(np.mean(ratios)),
                "sd": float(np.std(ratios, ddof=1)) if len(ratios) > 1 else 0.0,
            }
        for setting in ("w0", "recipe"):
            cols = {}
            for group, metric, _, _ in [*COLUMNS, ("few", "confusion", "", True), ("med", "acc", "", False)]:
                v = values(results, arm.slug, setting, group, metric)
                base = values(results, "ddpm", setting, group, metric)
                cols[f"{group}/{metric}"] = {
                    "mean": float(np.mean(v)),
                    "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                    "per_seed": v,
                    "vs_ddpm": None if arm.slug == "ddpm" else welch(v, base),
                }
            entry[setting] = cols
        out[arm.slug] = entry
    return out


def _cell(col: dict, lower: bool) -> str:
    text = f"{col['mean']:.2f} ± {col['sd']:.2f}"
    diff = col["vs_ddpm"]
    if diff is None:
        return text
    d, lo, hi = diff
    real = lo > 0 or hi < 0
    better = (d < 0) == lower
    mark = ("**" if better else "_") if real else ""
    return f"{text} ({mark}{d:+.2f}{mark})"


def render(summary: dict, args, meta: dict) -> str:
    lines = [
        "# Does PCL do anything? DDPM / CBDM ± PCL on digits_lt, a tau0 grid, both reductions (CPU)",
        "",
        f"Quickstart model (tiny UNet, 8x8 digits, imbalance 0.1, {args.steps} steps, batch 64, lr 1e-3); PCL = exp,",
        "exp-decay tau (temperature 0.5), distance mean over pixels. Seeds per arm: see n. Scores: "
        f"{args.per_class} DDIM-{SAMPLE_STEPS} samples per class in the feature space of a digits ResNet-20 "
        f"(held-out accuracy {meta['probe_accuracy']:.1f}%); shot groups {meta['groups']}, training counts "
        f"{meta['counts']}.",
        "Each cell: mean ± sd over seeds, then (difference to DDPM at the same setting). **bold** = the 95% Welch",
        "interval of the difference excludes 0 and the arm is better, _italic_ = excludes 0 and worse; plain = no",
        "detectable difference. few→head = share of few-shot samples the classifier assigns to a many-shot class.",
        "grad ratio = |dL_pcl/d eps_hat| / |dL_ddpm/d eps_hat|, median over the second half of training.",
    ]
    for setting, title in (
        ("recipe", "recipe guidance (DDPM family w = 0.8, CBDM family w = 1.6)"),
        ("w0", "w = 0"),
    ):
        header = ["Arm", "n", "grad ratio", *(f"{h} {'↓' if lo else '↑'}" for _, _, h, lo in COLUMNS)]
        lines += [
            "",
            f"## Sampled at {title}",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        for e in summary.values():
            gr = e.get("grad_ratio")
            ratio = "–" if gr is None else f"{gr['mean']:.3g}"
            cells = [_cell(e[setting][f"{g}/{m}"], lo) for g, m, _, lo in COLUMNS]
            lines.append(f"| {e['label']} | {len(e['seeds'])} | {ratio} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Wall time of this invocation: {meta['wall_s'] / 60:.0f} min ({meta['trained']} runs trained).",
        "",
    ]
    return "\n".join(lines)


READING = "\n## Reading"


def write_keeping_reading(path: Path, table: str) -> None:
    """Write the rendered tables, keeping the hand-written "## Reading" section of an earlier file at the end."""
    old = path.read_text() if path.is_file() else ""
    path.write_text(table + (old[old.index(READING) :] if READING in old else ""))


def plot(summary: dict, path: Path) -> None:
    """Few-shot FID and few-shot confusion against tau0 (log axis), mean ± sd, DDPM as a band."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 6.5), layout="constrained")
    axes = fig.subplots(2, 2)
    for col, (metric, name) in enumerate(
        (("few/fid", "few-shot FID"), ("few/confusion", "few-shot confusion %"))
    ):
        for row, setting in enumerate(("recipe", "w0")):
            ax = axes[row, col]
            if "ddpm" in summary:
                base = summary["ddpm"][setting][metric]
                ax.axhspan(
                    base["mean"] - base["sd"], base["mean"] + base["sd"], color="0.85", label="DDPM ± sd"
                )
                ax.axhline(base["mean"], color="0.5", lw=1)
            for reduction, marker in (("algorithm1_sum", "o"), ("pairs_mean", "s")):
                arms = sorted((e for e in summary.values() if e["reduction"] == reduction and e["family"] == "ddpm" and e["temperature"] == 0.5),
                              key=lambda e: e["tau0"])  # fmt: skip
                if arms:
                    ax.errorbar([e["tau0"] for e in arms], [e[setting][metric]["mean"] for e in arms],
                                yerr=[e[setting][metric]["sd"] for e in arms], marker=marker, capsize=3,
                                label=f"DDPM + PCL, {reduction}")  # fmt: skip
            ax.set_xscale("log")
            ax.set_xlabel("tau0")
            ax.set_ylabel(name)
            ax.set_title(
                f"{name}, sampled at {'recipe w = 0.8' if setting == 'recipe' else 'w = 0'}", fontsize="small"
            )
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize="x-small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=["*"], help="slugs or globs (default: all)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--jobs", type=int, default=2, help="trainings in parallel (one thread each on 2 cores)")
    p.add_argument("--probe-epochs", type=int, default=15, help="training epochs of the digits classifier")
    p.add_argument("--runs", type=Path, default=Path("logs/pcl_study"))
    p.add_argument("--out", type=Path, default=Path("experiments/results/pcl_study"))
    args = p.parse_args(argv)
    arms = [a for a in ARMS if any(fnmatch.fnmatch(a.slug, pat) for pat in args.arms)]
    if not arms:
        p.error(f"no arm matches {args.arms}; arms: {' '.join(a.slug for a in ARMS)}")
    children = Children()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, children.stop_all)
    start = time.monotonic()
    probe, probe_acc = load_or_train_probe(args.runs / "probe.pt", args.probe_epochs)
    full = load_digits(PROBE_SIZE)
    real = (probe_outputs(probe, full.images)[0], full.labels)
    counts = longtail_counts(int(torch.bincount(full.labels).max()), 10, 0.1)
    groups = shot_groups(counts)
    torch.set_num_threads(1)  # scoring runs in the worker threads, beside the trainings
    tasks = [(a, seed) for seed in args.seeds for a in arms if seed in a.seeds]  # seed-major
    trained = sum(training_state(args.runs / a.slug / f"seed{s}", args.steps)[0] != "done" for a, s in tasks)
    print(f"{len(tasks)} runs, {trained} to train, with {args.jobs} in parallel", flush=True)

    def run_one(arm: Arm, seed: int) -> dict:
        return score(train(arm, seed, args, children), arm, seed, args, probe, real, groups)

    results: dict[str, dict[int, dict]] = {}
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run_one, a, s): (a, s) for a, s in tasks}
        for done, future in enumerate(as_completed(futures), 1):
            arm, seed = futures[future]
            results.setdefault(arm.slug, {})[seed] = future.result()
            summary = summarise({a.slug: results[a.slug] for a in arms if a.slug in results})
            meta = {"probe_accuracy": probe_acc, "groups": groups, "counts": counts,
                    "wall_s": time.monotonic() - start, "trained": trained}  # fmt: skip
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "arms": summary}, indent=1))
            write_keeping_reading(args.out.with_suffix(".md"), render(summary, args, meta))
            print(
                f"[{done}/{len(tasks)}] {arm.slug} seed {seed} scored, {meta['wall_s'] / 60:.1f} min",
                flush=True,
            )
    plot(summary, args.out.with_suffix(".png"))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
