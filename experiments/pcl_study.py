"""Does PCL do anything? A CPU study on digits_lt: DDPM, a grouped-DDPM control, DDPM + PCL with the paper's Eq. 12
pairing (pairs share t and eps) at two strengths and with batch pairing, several seeds, each model sampled at
w = 0 and at its recipe guidance.

    python experiments/pcl_study.py                      # = make pcl-study; resumable (finished runs are skipped)
    python experiments/pcl_study.py --seeds 0 --arms ddpm pcl_eq12_tau1    # a subset
    python experiments/pcl_study.py --arms '*'           # every arm defined, the earlier tau0 grid and CBDM too
    python experiments/pcl_study.py --render-only        # <out>.md / .png again from <out>.json (--steps, --per-class
                                                         # as in the run)

Every arm trains the quickstart model (tiny UNet, 8x8 digits, imbalance 0.1, batch 64, lr 1e-3) for 1,000 steps with
the same seed, batch order and initial weights per seed; only the loss differs. Samples: DDIM-50, ``--per-class``
per class, the same initial noise for every arm of a seed (common random numbers). Differences to DDPM are
therefore paired by seed (diffrop.paper.paired: the t interval of the per-seed differences); Welch's unpaired
interval only where an arm shares fewer than 2 seeds with DDPM. Scores live in a digits classifier's feature space
(diffrop.paper.digits_probe): per-shot FID, KID and recall, accuracy, confusion (share of class-c samples assigned to
another class) and to_head (assigned to a many-shot class). The recipe guidance is the paper recipe's
``sampler.guidance`` (configs/experiment/method/<ddpm|cbdm>.yaml). Training diagnostics (``train/pcl/grad_ratio``,
``train/eps_slope``, ``train/pcl/d_between``, ``train/pcl/d_within``) are medians over the second half of training.
Writes <out>.md, <out>.json and <out>.png (default experiments/results/pcl_study.*) through diffrop.paper.study's
framework, with its statistics, table cells and training medians.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from diffrop.build import compose, net_from_checkpoint
from diffrop.data.datasets import load_digits, resize_uint8
from diffrop.data.longtail import longtail_counts, shot_groups
from diffrop.diffusion import samplers
from diffrop.diffusion.samplers import loop
from diffrop.evaluation.generate import to_uint8
from diffrop.paper import study
from diffrop.paper.cells import training_state
from diffrop.paper.digits_probe import PROBE_SIZE, load_or_train_probe, probe_outputs, score_by_group
from diffrop.paper.plots import paired_forest
from diffrop.paper.study import TRAIN_COLUMNS, header, interval_cell, spread, table, train_medians, value_cell
from diffrop.runtime.children import Children

ALG1_TAU0 = (0.01, 0.03, 0.1, 1, 3, 10, 30)  # per-anchor sum, batch 64: from negligible to dominant
PAIRS_MEAN_TAU0 = (100,)  # mean over pairs: ~56 partners per anchor at batch 64, so ~ alg1 at tau0 / 56
# eq12 strengths: 300-step runs (seed 0) logged grad ratio 0.018-0.023 at tau0 = 0.5 and 0.15-0.17 at tau0 = 4 over
# steps 150-300 (about 1/9 of batch pairing at the same tau0: ~6 different-label partners per anchor, not ~56)
EQ12_TAU0 = (0.5, 4)
# partner (one different-label partner per anchor, noised with the anchor's t and eps in a second forward, counted K_i
# times: Algorithm 1's sum): a 300-step run logged a true grad ratio of ~0.075 at tau0 = 0.2 (the committed results'
# partner arm, tau0 = 10, ran the earlier one-partner mean: about tau0 = 0.18 now)
PARTNER_TAU0 = (0.2,)
SAMPLE_STEPS = 50
PCL = ["loss.terms.pcl.phi=exp", "tau=exp_decay"]


@cache
def recipe_w(family: str) -> float:
    """The guidance w of the paper's recipe for a ``family`` ("ddpm" | "cbdm") model: ``sampler.guidance`` of
    ``experiment=cifar10lt/<family>`` as Hydra composes it (CBDM's README: DDPM 0.8, CBDM 1.6)."""
    return float(compose([f"experiment=cifar10lt/{family}"]).sampler.guidance)


@dataclass(frozen=True)
class Arm(study.Arm):  # family: ddpm | cbdm, picks the recipe guidance
    reduction: str | None = None
    temperature: float | None = None
    pairing: str | None = None  # batch | eq12 | partner (PCL arms and the grouped control)


def pcl_arm(reduction: str, tau0: float, base: str = "ddpm", temperature: float = 0.5,
            seeds: tuple[int, ...] = (0, 1, 2), pairing: str = "batch") -> Arm:  # fmt: skip
    short = {"algorithm1_sum": "alg1", "pairs_mean": "pmean"}[reduction]
    loss = "pcl_exp" if base == "ddpm" else "cbdm_pcl_exp"
    temp = "" if temperature == 0.5 else f"_temp{temperature:g}"
    kind = pairing if pairing in ("eq12", "partner") else short  # eq12 / partner arms: algorithm1_sum
    overrides = (f"loss={loss}", *PCL, f"tau.temperature={temperature}", f"tau.tau0={tau0}",
                 f"loss.terms.pcl.reduction={reduction}",
                 f"loss.terms.pcl.pairing={pairing}")  # explicit: the config's default is eq12 since main 9228078  # fmt: skip
    label = (f"{base.upper()} + PCL {kind if pairing != 'batch' else short + ', batch pairs,'} tau0={tau0:g}"
             + (f", temperature {temperature:g}" if temp else ""))  # fmt: skip
    return Arm(f"{'' if base == 'ddpm' else 'cbdm_'}pcl_{kind}_tau{tau0:g}{temp}", label, base, overrides, tau0,
               seeds, reduction, temperature, pairing)  # fmt: skip


# The grouped control: the eq12 training step (t and eps drawn once per group) with PCL at weight 0, so that an eq12
# arm's difference to it is PCL's alone, not the grouped sampling of t and eps.
CONTROL = "ddpm_eq12"
# The default run: DDPM, the control, batch-paired PCL at the config default, eq12 PCL at two strengths; 3 seeds each.
DEFAULT_ARMS = ("ddpm", CONTROL, "pcl_alg1_tau0.03", *(f"pcl_eq12_tau{t:g}" for t in EQ12_TAU0),
                *(f"pcl_partner_tau{t:g}" for t in PARTNER_TAU0))  # fmt: skip
# Two seeds where the effect is many times the seed spread (a 2-core session's budget; n is in the table).
TWO = (0, 1)
ARMS = [
    Arm("ddpm", "DDPM", "ddpm", ("loss=ddpm",)),
    # DDPM given a partner arm's compute (its second forward and backward): twice the batch, the same steps
    Arm(
        "ddpm_batch128",
        "DDPM, batch 128 (a partner arm's compute)",
        "ddpm",
        ("loss=ddpm", "data.batch_size=128"),
    ),
    Arm(
        CONTROL,
        "DDPM, eq12 groups (PCL tau0=0)",
        "ddpm",
        ("loss=pcl_exp", *PCL, "loss.terms.pcl.pairing=eq12", "tau.tau0=0"),
        pairing="eq12",
        tau0=0.0,
    ),
    *(pcl_arm("algorithm1_sum", t, pairing="eq12") for t in EQ12_TAU0),
    *(pcl_arm("algorithm1_sum", t, pairing="partner") for t in PARTNER_TAU0),
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
assert set(DEFAULT_ARMS) <= {a.slug for a in ARMS}


def train(arm: Arm, seed: int, args, children: Children) -> Path:
    run = args.runs / arm.slug / f"seed{seed}"
    if training_state(run, args.steps)[0] != "done":
        start = time.monotonic()
        study.train_script(run, ["experiment=quickstart", *arm.overrides, f"trainer.max_steps={args.steps}",
                                 f"seed={seed}", "logger=csv", "callbacks.sample_grid.every_n_steps=0",
                                 "callbacks.progress_bar=null"], max(1, (os.cpu_count() or 2) // args.jobs), children)  # fmt: skip
        print(f"  trained {arm.slug} seed {seed} in {time.monotonic() - start:.0f} s", flush=True)
    return run


def score(run: Path, arm: Arm, seed: int, args, probe, real, groups) -> dict:
    """Scores of one trained run at w = 0 and at its recipe w, cached in <run>/study_scores.json."""
    key = {"per_class": args.per_class, "steps": SAMPLE_STEPS, "w": [0.0, recipe_w(arm.family)], "kid": True,
           "train": sorted(TRAIN_COLUMNS)}  # fmt: skip

    def sample_and_score() -> dict:
        net, schedule, cfg, _ = net_from_checkpoint(run / "checkpoints" / "last.ckpt")
        y = torch.arange(10).repeat_interleave(args.per_class)
        out = {"train": train_medians(run / "metrics.csv"), "scores": {}}
        for w in key["w"]:
            gen = torch.Generator().manual_seed(1000 + seed)  # the same noise for every arm of this seed
            shape = (len(y), 3, int(cfg.data.image_size), int(cfg.data.image_size))
            x = loop.run(samplers.get("ddim"), net, schedule, y, shape, SAMPLE_STEPS, 0.0, w, gen)
            feats, preds = probe_outputs(probe, resize_uint8(to_uint8(x), PROBE_SIZE))
            out["scores"][f"{w:g}"] = score_by_group(real, (feats, y, preds), groups)
        return out

    return study.cached(run / "study_scores.json", key, sample_and_score)


# --- aggregation -----------------------------------------------------------------------------------------
COLUMNS = [  # (group, metric, header, lower is better)
    ("many", "fid", "FID many", True),
    ("med", "fid", "FID med", True),
    ("few", "fid", "FID few", True),
    ("many", "kid", "KID many", True),
    ("med", "kid", "KID med", True),
    ("few", "kid", "KID few", True),
    ("few", "recall", "recall few", False),
    ("many", "acc", "acc many %", False),
    ("few", "acc", "acc few %", False),
    ("few", "to_head", "few→head %", True),
]
EXTRA = [("few", "confusion", "", True), ("med", "acc", "", False)]  # in the JSON only
# the paired-difference tables and the figure
KEY_COLUMNS = [("few", "fid", "FID few", True), ("few", "kid", "KID few", True), ("few", "acc", "acc few %", False),
               ("few", "to_head", "few→head %", True)]  # fmt: skip
SCALE = {"kid": 100.0}  # KID shown x 100 (probe features are large: KID 0.05-1.5); the JSON: raw
SETTINGS = ("w0", "recipe")


def setting_title(setting: str) -> str:
    if setting == "w0":
        return "w = 0"
    return f"recipe guidance (DDPM family w = {recipe_w('ddpm'):g}, CBDM family w = {recipe_w('cbdm'):g})"


def values(results: dict, slug: str, setting: str, group: str, metric: str) -> dict[int, float]:
    """One metric of one arm, keyed by seed; ``setting`` is "w0" or "recipe"."""
    out = {}
    for seed, entry in results.get(slug, {}).items():
        w = "0" if setting == "w0" else next(k for k in entry["scores"] if k != "0")
        out[int(seed)] = entry["scores"][w][group][metric]
    return out


def summarise(results: dict, args=None) -> dict:
    """Per arm: the training diagnostics and, per setting, mean, sd, per-seed values and the differences to DDPM
    (and, for eq12 PCL arms, to the grouped control) of every column. ``results``: slug -> seed -> scores."""
    out = {}
    for arm in sorted(
        ARMS, key=lambda a: DEFAULT_ARMS.index(a.slug) if a.slug in DEFAULT_ARMS else len(ARMS)
    ):
        if arm.slug not in results:
            continue
        runs = results[arm.slug]
        entry = {"label": arm.label, "seeds": sorted(int(s) for s in runs), "reduction": arm.reduction,
                 "temperature": arm.temperature, "tau0": arm.tau0, "family": arm.family, "pairing": arm.pairing,
                 "train": {}}  # fmt: skip
        for key in TRAIN_COLUMNS:
            logged = {int(s): e["train"][key] for s, e in runs.items() if key in e.get("train", {})}
            if logged:
                entry["train"][key] = spread(logged)
        against_control = arm.pairing == "eq12" and arm.slug != CONTROL and CONTROL in results
        for setting in SETTINGS:
            cols = {}
            for group, metric, _, _ in [*COLUMNS, *EXTRA]:
                v = values(results, arm.slug, setting, group, metric)
                against = {"vs_ddpm": None if arm.slug == "ddpm" else values(results, "ddpm", setting, group, metric),
                           "vs_control": values(results, CONTROL, setting, group, metric) if against_control else None}  # fmt: skip
                cols[f"{group}/{metric}"] = study.column(v, against, welch=True, seed_key=int)
            entry[setting] = cols
        out[arm.slug] = entry
    return out


def _stat(entry: dict, key: str, digits: int = 3) -> str:
    s = entry["train"].get(key)
    return "–" if s is None else f"{s['mean']:.{digits}g} ± {s['sd']:.2g}"


def render(summary: dict, args, meta: dict) -> str:
    lines = [
        "# Does PCL do anything? DDPM ± PCL on digits_lt: Eq. 12 pairing vs batch pairing, paired by seed (CPU)",
        "",
        f"Quickstart model (tiny UNet, 8x8 digits, imbalance 0.1, {args.steps} steps, batch 64, lr 1e-3); PCL = exp,",
        "exp-decay tau (temperature 0.5), distance mean over pixels, per-anchor sum (algorithm1_sum). Pairing: *batch* =",
        "every different-label pair of the batch, each sample with its own t and eps; *eq12* = the paper's Eq. 12, t and",
        "eps drawn once per group of samples and pairs only inside a group. The eq12 control is that grouped training",
        "step with PCL at tau0 = 0. Arms of one seed share initial weights, data order and sampling noise. Scores: "
        f"{args.per_class} DDIM-{SAMPLE_STEPS} samples per class in the feature space of a digits ResNet-20 "
        f"(held-out accuracy {meta['probe_accuracy']:.1f}%); shot groups {meta['groups']}, training counts "
        f"{meta['counts']}. KID = unbiased MMD² (cubic kernel) of a group's generated vs real features, shown x 100.",
        "Each value cell: mean ± sd over seeds, then (difference to DDPM at the same setting). Differences are paired",
        "by seed: mean of the per-seed differences and its 95% t interval (n - 1 df); † = Welch's unpaired interval,",
        "used only where an arm shares fewer than 2 seeds with DDPM. **bold** = the interval excludes 0 and the arm is",
        "better, _italic_ = excludes 0 and worse; plain = no detectable difference. few→head = share of few-shot",
        "samples the classifier assigns to a many-shot class.",
        "",
        "## Training diagnostics",
        "",
        "Medians over the second half of training (logged every 25 steps), then mean ± sd over seeds. grad ratio =",
        "|dL_pcl/d eps_hat| / |dL_ddpm/d eps_hat|; eps_slope = slope of eps_hat on eps; d_between / d_within = mean",
        "distance between posterior means of different-label / same-label samples.",
        "",
        *table(["Arm", "n", "grad ratio", "eps_slope", "d_between", "d_within", "d_between − d_within"]),
    ]
    for e in summary.values():
        t = e["train"]
        gap = (
            f"{t['d_between']['mean'] - t['d_within']['mean']:.4f}"
            if "d_between" in t and "d_within" in t
            else "–"
        )
        lines.append(f"| {e['label']} | {len(e['seeds'])} | {_stat(e, 'grad_ratio')} | {_stat(e, 'eps_slope', 4)} | "
                     f"{_stat(e, 'd_between', 4)} | {_stat(e, 'd_within', 4)} | {gap} |")  # fmt: skip
    for setting in SETTINGS:
        title = setting_title(setting)
        rows = [
            [e["label"], str(len(e["seeds"])),
             *(value_cell(e[setting][f"{g}/{m}"], lo, scale=SCALE.get(m, 1.0)) for g, m, _, lo in COLUMNS)]
            for e in summary.values()
        ]  # fmt: skip
        lines += ["", f"## Sampled at {title}", "",
                  *table(["Arm", "n", *(header(h, lo) for _, _, h, lo in COLUMNS)], rows)]  # fmt: skip
        rows = []
        for e in summary.values():
            for against, name in (("vs_ddpm", "DDPM"), ("vs_control", "eq12 control")):
                cols = [e[setting][f"{g}/{m}"] for g, m, _, _ in KEY_COLUMNS]
                if all(c[against] is None for c in cols):
                    continue
                cells = [
                    interval_cell(c[against], lo, scale=SCALE.get(m, 1.0))
                    for c, (_, m, _, lo) in zip(cols, KEY_COLUMNS, strict=True)
                ]
                rows.append([e["label"], name, *cells])
        lines += ["", f"Paired differences at {title.split(' (')[0]}, mean [95% interval]:", "",
                  *table(["Arm", "vs", *(f"Δ {header(h, lo)}" for _, _, h, lo in KEY_COLUMNS)], rows)]  # fmt: skip
    lines += [
        "",
        f"Wall time of this invocation: {meta['wall_s'] / 60:.0f} min ({meta['trained']} runs trained).",
        "",
    ]
    return "\n".join(lines)


PLOTTED = [
    ("few/fid", "few-shot FID", 1.0),
    ("few/kid", "few-shot KID x 100", 100.0),
    ("few/to_head", "few→head %", 1.0),
]


def plot(summary: dict, path: Path) -> None:
    """Each arm's paired difference to DDPM with its 95% interval, w = 0 and recipe guidance side by side."""
    arms = [e for slug, e in summary.items() if slug != "ddpm" and e["w0"]["few/fid"]["vs_ddpm"] is not None]
    settings = (("w0", "C0", "w = 0"), ("recipe", "C1", "recipe w"))
    paired_forest(arms, PLOTTED, settings, "< 0 = lower than DDPM (better for FID, KID, few→head)", path)


def prepare(args, arms: list[Arm]) -> tuple[dict, dict]:
    """The digits classifier (trained once, kept in <runs>/probe.pt), the real features and the shot groups; the
    trainings' children stopped on SIGTERM, SIGINT and SIGHUP."""
    children = Children.stopped_on_signals()
    probe, probe_acc = load_or_train_probe(args.runs / "probe.pt", args.probe_epochs)
    full = load_digits(PROBE_SIZE)
    real = (probe_outputs(probe, full.images)[0], full.labels)
    counts = longtail_counts(int(torch.bincount(full.labels).max()), 10, 0.1)
    groups = shot_groups(counts)
    torch.set_num_threads(1)  # scoring runs in the worker threads, beside the trainings
    for arm in arms:  # composed here: Hydra's global state is not for the worker threads
        recipe_w(arm.family)
    facts = {"probe_accuracy": probe_acc, "groups": groups, "counts": counts, "per_class": args.per_class}
    return facts, {"children": children, "probe": probe, "real": real, "groups": groups}


def run_one(arm: Arm, seed: int, args, c: dict) -> dict:
    return score(train(arm, seed, args, c["children"]), arm, seed, args, c["probe"], c["real"], c["groups"])


def options(p) -> None:
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--probe-epochs", type=int, default=15, help="training epochs of the digits classifier")


STUDY = study.Study(
    "pcl_study", __doc__, ARMS, run_one, summarise, lambda body, args: render(body["arms"], args, body["meta"]),
    plot, done=lambda arm, seed, args: training_state(args.runs / arm.slug / f"seed{seed}", args.steps)[0] == "done",
    prepare=prepare, options=options, progress=lambda result, args: "scored", default_arms=DEFAULT_ARMS, jobs=2,
    threads=True, cap_seeds=True, stored_flags=("steps", "jobs", "per_class"), write_each=True,
)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    study.main(STUDY, argv)


if __name__ == "__main__":
    main()
