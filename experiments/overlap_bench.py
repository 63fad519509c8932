"""A known-answer overlap benchmark: does PCL reduce tail-to-head overlap where the right answer is known exactly?

    python experiments/overlap_bench.py                  # = make overlap-bench; resumable (finished runs are kept)
    python experiments/overlap_bench.py --seeds 0 1 --arms ddpm pcl_batch_tau0.3 --steps 100    # a subset
    python experiments/overlap_bench.py --render-only --jobs 2   # <out>.md / .png again from <out>.json (the
                                                                 # header's other flags as in the run)

Data: ``data=gaussian_lt`` (diffrop.data.gaussian_datamodule): 4 Gaussian classes in 16 dims, imbalance 100, the
head (class 0) and the tail (class 3) overlapping. There the Bayes-optimal eps*(x_t, t, c), the true class
distributions and the Bayes classifier are closed forms (diffrop.data.gaussian_mixture), so every score is exact,
with no Inception or probe network in between. Every arm trains ``model=mlp`` through the same configs, builders
and LightningModule that ``src/train.py`` uses (composed in-process); only the loss differs. A seed fixes the
initial weights, the training draws, the batch order, the held-out draws and the sampling noise, so the arms of a
seed are compared paired by seed (diffrop.paper.paired).

Scores of the EMA network:
  eps_err   mean over a t grid and the classes of |eps_hat - eps*|^2 / D on fresh x_t (0 = Bayes-optimal)
  slope     mean over the t grid of the regression slope of eps_hat on eps (through 0); eps*'s own is the reference
  leakage   share of generated class-c samples that the true (equal-prior) Bayes classifier assigns to the head,
            minus the same share for true class-c samples (0 = no extra overlap); ``_tail`` = class 3
  kl        KL(fitted Gaussian of the generated class || true class Gaussian)
  bc_excess Bhattacharyya coefficient of the fitted generated head and tail minus the true one (> 0: more overlap)
Samples: DPM-Solver++(2M) (or --sampler ddim) with the same seeded noise for every arm of a seed; the closed-form eps* through the same sampler
gives each score's sampler floor. ``grad_ratio`` is the median of ``train/pcl/grad_ratio`` over the second half.
Writes <out>.md, <out>.json and <out>.png (default experiments/results/overlap_bench.*) through diffrop.paper.study's
framework; the scores are diffrop.paper.mixture_scores', shared with experiments/ddp_streams.py.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffrop.paper import study
from diffrop.paper.mixture_scores import HEAD, T_GRID, TAIL, flat_scores, score_net
from diffrop.paper.study import error_bars, header, interval_cell, table, train_medians, value_cell

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mixture_recipe import FLAGS, bayes_json, options, prepare, progress, quiet_worker, train

EXP = ("loss=pcl_exp", "tau=exp_decay")
BATCH = ("loss.terms.pcl.pairing=batch",)  # each sample at its own t and eps (the pairing before Eq. 12)
EQ12 = ("loss.terms.pcl.pairing=eq12", "loss.terms.pcl.group_size=8")
PARTNER = ("loss.terms.pcl.pairing=partner",)  # Eq. 12 by one extra forward: no grouping of the DDPM draws
# beyond the paper: two labels' denoisers at the anchor's own x_t
SAME_XT = ("loss.terms.pcl.pairing=same_xt",)
# margin 0.05 ~ the mean between-class d / abar_{t-1} of this data (d = mean over the 16 dims of |x0^i - x0^j|^2
# under Eq. 12): the hinge pushes apart pairs closer than a typical cross-class pair. The default margin 1.0 is 20x
# every pair's d here, so the hinge would be active on all pairs: the naive -d form of paper Fig. 2.
HINGE = (
    "loss=pcl_hinge",
    "tau=exp_decay",
    *EQ12,
    "loss.terms.pcl.margin_schedule=abar",
    "loss.terms.pcl.margin=0.05",
)


FIVE, EIGHT = tuple(range(5)), tuple(range(8))


@dataclass(frozen=True)
class Arm(study.Arm):
    seeds: tuple[int, ...] = FIVE  # the default run's seeds (--seeds replaces them for every arm)
    steps_factor: int = 1  # trainer.max_steps = steps_factor * --steps (DDPM at a second forward's compute)
    control: str | None = None  # the grouped control (same groups, tau0 = 0) of an Eq. 12 arm
    forwards: int = 1  # network forwards (and backwards) per step: what "equal compute" matches


def group(size: int) -> tuple[str, ...]:
    return ("loss.terms.pcl.pairing=eq12", f"loss.terms.pcl.group_size={size}")


def pcl_arm(family: str, tau0: float, seeds: tuple[int, ...] = FIVE) -> Arm:
    overrides, name = {
        "pcl_batch": ((*EXP, *BATCH), "PCL exp, batch pairs"),
        "pcl_eq12": ((*EXP, *EQ12), "PCL exp, Eq. 12 groups"),
        "pcl_eq12_g4": ((*EXP, *group(4)), "PCL exp, Eq. 12 groups of 4"),
        "pcl_eq12_g2": ((*EXP, *group(2)), "PCL exp, Eq. 12 groups of 2"),
        "pcl_partner": ((*EXP, *PARTNER), "PCL exp, Eq. 12 partner (2nd forward)"),
        "pcl_feed": (("loss=feed_pcl_exp", "tau=exp_decay", *PARTNER),
                     "PCL exp, partner, its forward also in the DDPM loss"),
        "pcl_rarer": ((*EXP, *PARTNER, "loss.terms.pcl.push=rarer"), "PCL exp, partner, one-sided (rarer moves)"),
        "pcl_same_xt": ((*EXP, *SAME_XT), "PCL exp, same x_t, other label (2nd forward)"),
        "hinge_eq12": (HINGE, "PCL hinge (margin 0.05 x abar), Eq. 12 groups"),
    }[family]  # fmt: skip
    control = {"pcl_eq12": "grouped_ddpm", "hinge_eq12": "grouped_ddpm", "pcl_eq12_g4": "grouped_ddpm_g4",
               "pcl_eq12_g2": "grouped_ddpm_g2"}.get(family)  # fmt: skip
    forwards = 2 if family in TWO_FORWARD else 1
    return Arm(f"{family}_tau{tau0:g}", f"{name}, tau0={tau0:g}", family, (*overrides, f"tau.tau0={tau0}"), tau0,
               seeds, control=control, forwards=forwards)  # fmt: skip


TWO_FORWARD = ("pcl_partner", "pcl_feed", "pcl_rarer", "pcl_same_xt")
# DDPM given a second forward's compute: twice the steps, or twice the batch (the reference of every 2-forward arm)
EQUAL_COMPUTE = ("ddpm_2x_steps", "ddpm_2x_batch")
DEFAULT_TAU0 = (
    0.4  # the default arm (pairing partner, algorithm1_sum = K_i phi, tau=exp_decay): true grad ratio ~0.07
)


# tau0 grids from the grad ratios measured in 300-step runs (batch 128), so each family spans ~0.01 to ~0.3:
# batch pairs ~0.45 tau0; Eq. 12 pairs only inside groups of 8 (~20x fewer partners per anchor, noise-free d),
# exp ~0.008 tau0, hinge (margin 0.05) ~0.005 tau0. Groups of 4 / 2 have 3 / 1 partners per group instead of 7.
# partner and same_xt: Algorithm 1's sum, K_i phi(d_ij) (K_i ~ 27 for a head anchor, ~127 for a tail one).
ARMS = [
    Arm("ddpm", "DDPM", "ddpm", ("loss=ddpm",), seeds=EIGHT),
    Arm("ddpm_2x_steps", "DDPM, 2x steps (= 2 forwards' compute)", "ddpm_2x_steps", ("loss=ddpm",), seeds=EIGHT,
        steps_factor=2),
    Arm("ddpm_2x_batch", "DDPM, 2x batch (= 2 forwards' compute)", "ddpm_2x_batch", ("loss=ddpm", "data.batch_size=256"),
        seeds=EIGHT),
    Arm("grouped_ddpm", "DDPM, Eq. 12 groups (tau0 = 0)", "grouped_ddpm", (*EXP, *EQ12, "tau.tau0=0"), 0.0),
    Arm("grouped_ddpm_g4", "DDPM, Eq. 12 groups of 4 (tau0 = 0)", "grouped_ddpm_g4", (*EXP, *group(4), "tau.tau0=0"), 0.0),
    Arm("grouped_ddpm_g2", "DDPM, Eq. 12 groups of 2 (tau0 = 0)", "grouped_ddpm_g2", (*EXP, *group(2), "tau.tau0=0"), 0.0),
    *(pcl_arm("pcl_batch", t) for t in (0.02, 0.6)),
    *(pcl_arm("pcl_eq12", t) for t in (1.5, 8, 40)),
    pcl_arm("pcl_eq12_g4", 20),  # ~ the grad ratio of groups of 8 at tau0 = 8
    pcl_arm("pcl_eq12_g2", 60),
    *(pcl_arm("hinge_eq12", t) for t in (2, 60)),
    pcl_arm("pcl_partner", DEFAULT_TAU0, seeds=EIGHT),  # the default
    pcl_arm("pcl_partner", 4 * DEFAULT_TAU0),
    pcl_arm("pcl_feed", 0.3),  # its DDPM gradient is spread over 2B outputs: 0.3 gives the default arm's ratio
    pcl_arm("pcl_rarer", DEFAULT_TAU0),
    *(pcl_arm("pcl_same_xt", t) for t in (5, 20)),  # d ~ beta_t^2 |eps gap|^2: tiny, and it grows
]  # fmt: skip


def run_one(arm: Arm, seed: int, args, context: dict) -> dict:
    """Train (unless its result exists) and score one arm for one seed; the result is cached as JSON."""
    quiet_worker()
    key = {"steps": args.steps * arm.steps_factor, "per_class": args.per_class, "guidance": args.guidance,
           "overrides": arm.overrides, "sampler": f"{args.sampler}{args.sample_steps}",
           "eval_per_class": args.eval_per_class, "train": args.train}  # fmt: skip
    run_dir = args.runs / arm.slug / f"seed{seed}"

    def fit_and_score() -> dict:
        shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run's metrics.csv would be appended to
        start = time.monotonic()
        module, datamodule = train(arm, seed, args, run_dir)
        result = {"train": train_medians(run_dir / "metrics.csv"), "train_s": time.monotonic() - start}
        result |= score_net(
            module.ema.float().eval(), module.schedule, datamodule.mixture, seed, args, context["truth"]
        )
        return result | {"wall_s": time.monotonic() - start}

    return study.cached(run_dir.with_suffix(".json"), key, fit_and_score)


def summarise(results: dict[str, dict[int, dict]], guidance: list[float]) -> dict:
    """Per arm and metric: values per seed, mean, sd, and the paired-by-seed differences to DDPM, to an Eq. 12 arm's
    grouped control and (two-forward arms) to DDPM at equal compute."""
    flat = {
        slug: {seed: flat_scores(r, guidance) for seed, r in runs.items()} for slug, runs in results.items()
    }

    def values(slug: str, name: str) -> dict[int, float]:
        return {s: v[name] for s, v in flat.get(slug, {}).items() if name in v}

    out = {}
    for arm in ARMS:
        if arm.slug not in flat:
            continue
        metrics = {}
        for name in next(iter(flat[arm.slug].values())):
            compare = name != "grad_ratio"
            against = {"vs_ddpm": values("ddpm", name) if compare and arm.slug != "ddpm" else None}
            if compare and arm.control:  # PCL's own effect, grouping held fixed
                against["vs_grouped_ddpm"] = values(arm.control, name)
            if compare and arm.forwards == 2:  # against DDPM given the same compute
                against |= {f"vs_{slug}": values(slug, name) for slug in EQUAL_COMPUTE}
            metrics[name] = study.column(values(arm.slug, name), against)
        out[arm.slug] = {"label": arm.label, "family": arm.family, "tau0": arm.tau0, "seeds": sorted(flat[arm.slug]),
                         "forwards": arm.forwards, "metrics": metrics,
                         "slope_per_t": np.mean([r["eps"]["per_t"]["slope"] for r in results[arm.slug].values()],
                                                0).tolist()}  # fmt: skip
    return out


KEY_METRICS = [  # (metric, header, lower is better)
    ("leakage_tail@w0", "leakage tail→head", True),
    ("eps_err", "eps error", True),
    ("kl_tail@w0", "KL tail", True),
    ("kl_mean@w0", "KL mean", True),
    ("bc_excess@w0", "BC excess head-tail", True),
    ("slope", "slope eps_hat~eps", False),
]


def metric_digits(name: str) -> int:
    return 4 if name.startswith(("leakage", "bc_", "eps_err")) else 3


def render(body: dict, args) -> str:
    """The tables of <out>.md from <out>.json's body; its ``bayes_reference``: seed -> the closed-form eps*'s
    ``flat_scores`` and ``slope_per_t``."""
    summary, bayes, meta = body["arms"], body["bayes_reference"], body["meta"]
    guidance = [w for w in args.guidance if w != 0]
    key = KEY_METRICS + [(f"{m.split('@')[0]}@w{w:g}", f"{h} (w={w:g})", lo)
                         for w in guidance for m, h, lo in KEY_METRICS if "@" in m]  # fmt: skip
    lines = [
        "# Known-answer overlap benchmark: DDPM vs PCL on a long-tailed Gaussian mixture",
        "",
        f"`data=gaussian_lt`: {meta['num_classes']} Gaussian classes in {meta['dim']} dims (mostly in a 2-D plane), "
        f"training counts {meta['counts']} (imbalance 100); head = class {HEAD}, tail = class {TAIL}, their "
        f"pairwise Bayes error (equal priors, Monte-Carlo, {2 * args.mc_draws:,} draws) is {meta['pairwise_bayes_error']:.4f}; "
        f"true head-tail Bhattacharyya coefficient {meta['bc_true']:.4f}.",
        f"`model=mlp` ({meta['params']:,} parameters), {args.steps} steps of batch {meta['batch_size']} (the 2x arms: "
        f"twice either), Adam 2e-3 (100-step warm-up), EMA 0.995; seeds {meta['seeds']} (n per arm in the table). Scores of the EMA net: eps error on {args.eval_per_class} fresh draws per "
        f"class at t in {list(T_GRID)}; {args.per_class} {args.sampler}-{args.sample_steps} samples per class at w = 0 "
        "(same noise for every arm of a seed).",
        "Each cell: mean ± sd over seeds, then the paired-by-seed difference to DDPM [95% paired t interval]. "
        "**bold**: the interval excludes 0 and the arm is better; _italic_: excludes 0 and worse.",
        "grad ratio = |dL_pcl/d eps_hat| / |dL_ddpm/d eps_hat| over every network output of the step (a 2nd "
        "forward's included; median over the second half of training).",
        "",
        *table(["Arm", "n", "grad ratio", *(header(h, lo) for _, h, lo in key)]),
    ]
    bayes_cells = []
    for name, _, _ in key:
        values = [r.get(name) for r in bayes.values()]
        bayes_cells.append(f"{np.mean(values):.{metric_digits(name)}f}" if None not in values else "–")
    lines.append(f"| Bayes eps* (sampler floor) | {len(bayes)} | – | " + " | ".join(bayes_cells) + " |")
    for e in summary.values():
        gr = e["metrics"].get("grad_ratio")
        ratio = "–" if gr is None else f"{gr['mean']:.3g}"
        cells = [
            value_cell(e["metrics"][name], lo, metric_digits(name), interval=True) for name, _, lo in key
        ]
        lines.append(f"| {e['label']} | {len(e['seeds'])} | {ratio} | " + " | ".join(cells) + " |")
    grouped_arms = [e for e in summary.values() if e["metrics"]["eps_err"].get("vs_grouped_ddpm")]
    if grouped_arms:
        lines += [
            "",
            "## Eq. 12 arms against their own control, grouped DDPM (same groups, tau0 = 0)",
            "",
            "PCL's own effect with the shared-(t, eps) grouping held fixed: the arm minus grouped DDPM, paired by "
            "seed [95% interval].",
            "",
            *table(["Arm", "grad ratio", *(header(h, lo) for _, h, lo in KEY_METRICS)]),
        ]
        for e in grouped_arms:
            cells = [
                interval_cell(e["metrics"][name].get("vs_grouped_ddpm"), lower, metric_digits(name))
                for name, _, lower in KEY_METRICS
            ]
            ratio = e["metrics"]["grad_ratio"]["mean"]
            lines.append(f"| {e['label']} | {ratio:.3g} | " + " | ".join(cells) + " |")
    two = [e for e in summary.values() if e.get("forwards") == 2]
    for slug in EQUAL_COMPUTE:
        if not two or slug not in summary:
            continue
        lines += [
            "",
            f"## Two-forward arms against DDPM at equal compute: {summary[slug]['label']}",
            "",
            "Each arm minus that DDPM arm, paired by seed [95% interval] (n: the seeds both have).",
            "",
            *table(["Arm", "n", "grad ratio", *(header(h, lo) for _, h, lo in KEY_METRICS)]),
        ]
        for e in two:
            diffs = [e["metrics"][name].get(f"vs_{slug}") for name, _, _ in KEY_METRICS]
            n = len(diffs[0]["seeds"]) if diffs[0] else 0
            cells = [interval_cell(d, lower, metric_digits(name)) for d, (name, _, lower) in zip(diffs, KEY_METRICS,
                     strict=True)]  # fmt: skip
            ratio = e["metrics"]["grad_ratio"]["mean"] if "grad_ratio" in e["metrics"] else float("nan")
            lines.append(f"| {e['label']} | {n} | {ratio:.3g} | " + " | ".join(cells) + " |")
    slope_bayes = np.mean([r["slope_per_t"] for r in bayes.values()], 0)
    lines += [
        "",
        '## Slope of eps_hat on eps per t (mean over seeds; 1 - slope = the "predicts less noise" shrinkage)',
        "",
        "| | " + " | ".join(f"t={t}" for t in T_GRID) + " |",
        "|" + "---|" * (1 + len(T_GRID)),
        "| Bayes eps* | " + " | ".join(f"{v:.4f}" for v in slope_bayes) + " |",
        *(
            f"| {e['label']} | " + " | ".join(f"{v:.4f}" for v in e["slope_per_t"]) + " |"
            for e in summary.values()
        ),
        "",
        f"Wall time of this invocation: {meta['wall_s'] / 60:.1f} min ({meta['trained']} runs trained, "
        f"{args.jobs} in parallel); the runs' own times add up to {meta['runs_s'] / 60:.0f} min "
        f"(median {meta['run_s_median']:.0f} s per run, each on one thread of a shared 2-core machine).",
        "",
    ]
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    """Each arm's paired difference to DDPM with its 95% interval against the measured grad ratio."""
    from matplotlib.figure import Figure

    panels = [("leakage_tail@w0", "tail→head leakage, w = 0"), ("eps_err", "eps error (mean over t)"),
              ("kl_tail@w0", "KL tail, w = 0"), ("kl_mean@w0", "KL mean over classes, w = 0")]  # fmt: skip
    fig = Figure(figsize=(11, 7.5), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    families = sorted({e["family"] for e in summary.values()} - {"ddpm"})
    for ax, (metric, title) in zip(axes, panels, strict=True):
        ax.axhline(0, color="0.5", lw=1)
        for k, family in enumerate(families):
            arms = [e for e in summary.values() if e["family"] == family and e["metrics"][metric]["vs_ddpm"]]
            if not arms:
                continue
            ratio = [max(e["metrics"].get("grad_ratio", {"mean": 1e-3})["mean"], 1e-3) for e in arms]
            mean, err = error_bars([e["metrics"][metric]["vs_ddpm"] for e in arms])
            ax.errorbar(np.array(ratio) * (1 + 0.04 * k), mean, yerr=err, marker="os^Dv<>ph*P"[k % 11],
                        color=f"C{k % 10}", capsize=3, ls="-" if len(arms) > 1 else "none", label=family)  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("measured grad ratio (arms without a PCL term drawn at 1e-3)")
        ax.set_ylabel("arm − DDPM (paired, 95% interval)")
        ax.set_title(title, fontsize="small")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="x-small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


STUDY = study.Study(
    "overlap_bench", __doc__, ARMS, run_one, lambda results, args: summarise(results, args.guidance), render, plot,
    done=lambda arm, seed, args: (args.runs / arm.slug / f"seed{seed}.json").is_file(), prepare=prepare,
    extra=bayes_json, options=options, progress=progress, base="ddpm", jobs=3, stored_flags=("steps", "jobs", *FLAGS),
)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    study.main(STUDY, argv)


if __name__ == "__main__":
    main()
