"""CPU mini-study on digits_lt: DDPM vs DDPM + PCL (exp) vs CBDM, scored per shot like paper Table 2.

    python experiments/quickstart_study.py [--steps N] [--seeds 0] [--per-class 100]

Same tiny UNet, seed, steps and batch order for every method (only the loss differs). Metrics live in the feature
space of a small digits classifier (CIFAR ResNet-20 trained on the balanced digits; its pooled penultimate
features stand in for Inception, which is far too slow on a CPU): per-shot FID and recall against the balanced
digits of the same classes, and the classifier's accuracy on the generated images (does a tail-class sample look
like its class?). Writes experiments/results/quickstart_study.md. A few minutes per method on a laptop CPU;
a toy, not evidence about CIFAR.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from diffrop.build import net_from_checkpoint
from diffrop.children import run_logged
from diffrop.classifier import CifarResNet, ClassifierModule, classification_metrics, split_per_class
from diffrop.data.datasets import load_digits, resize_uint8
from diffrop.data.longtail import longtail_counts, shot_groups
from diffrop.diffusion.sampling import ddim_sample, to_uint8
from diffrop.metrics.scores import fid_from_features, precision_recall
from diffrop.reproduce import training_state

REPO = Path(__file__).resolve().parents[1]
# The quickstart trains at the digits' native 8x8; samples are upscaled to the classifier's 16x16 exactly as
# load_digits upscales the real ones (at 8x8 the ResNet-20 reaches only ~89% held-out accuracy, at 16x16 ~98%).
QUICKSTART = OmegaConf.load(REPO / "configs" / "experiment" / "quickstart.yaml")
IMAGE_SIZE = int(QUICKSTART.data.image_size)
CLASSIFIER_SIZE = 16

METHODS = {  # name -> src/train.py overrides on top of experiment=quickstart
    "DDPM": ["loss=ddpm"],
    "DDPM + PCL (exp)": ["loss=pcl_exp", "tau=exp_decay"],
    "CBDM": ["loss=cbdm"],
}


def train_feature_classifier(epochs: int, seed: int = 0) -> tuple[ClassifierModule, float]:
    """ResNet-20 on 70% of the balanced digits; returns it and its held-out accuracy (a sanity check)."""
    L.seed_everything(seed)
    train, test = split_per_class(load_digits(CLASSIFIER_SIZE), 0.3)
    module = ClassifierModule(
        CifarResNet(10, depth=20),
        lr=0.05,
        warmup_epochs=1,
        milestones=(int(0.75 * epochs),),
        gamma=0.1,
        flip=False,
    )
    loader = DataLoader(
        TensorDataset(train.images, train.labels), batch_size=64, shuffle=True, drop_last=True
    )
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, loader)
    acc = classification_metrics(module.predict_all(test.images), test.labels, 10)["accuracy"]
    return module.eval(), acc


@torch.no_grad()
def features(module: ClassifierModule, images: torch.Tensor) -> torch.Tensor:
    c = module.classifier
    return torch.cat([c.net.features((b.float() - c.mean) / c.std) for b in images.split(500)])


def train_model(name: str, overrides: list[str], run: Path, steps: int, seed: int) -> Path:
    ckpt = run / "checkpoints" / "last.ckpt"
    if training_state(run, steps)[0] == "done":
        return ckpt  # an unfinished run resumes from its last checkpoint (ckpt_path=auto)
    train_py = str(REPO / "src" / "train.py")
    cmd = [sys.executable, train_py, "experiment=quickstart", *overrides, f"trainer.max_steps={steps}",
           f"seed={seed}", f"hydra.run.dir={run}", "callbacks.sample_grid.every_n_steps=0", "logger=csv"]  # fmt: skip
    start = time.monotonic()
    log = run.with_suffix(".log")
    if rc := run_logged(cmd, log):  # stopped with this script: no orphan to collide with the re-run
        raise subprocess.CalledProcessError(rc, cmd, f"see {log}")
    print(f"trained {name} (seed {seed}) in {time.monotonic() - start:.0f} s: {run}", flush=True)
    return ckpt


def score(ckpt: Path, classifier, real_feats, real_labels, groups, per_class: int, seed: int) -> dict:
    net, schedule, cfg, _ = net_from_checkpoint(ckpt)
    size = int(cfg.data.image_size)
    if size != IMAGE_SIZE:  # a UNet runs at any size, but samples off its training size are noise
        raise ValueError(
            f"{ckpt} was trained at {size}x{size}; the study scores at {IMAGE_SIZE}x{IMAGE_SIZE}"
        )
    y = torch.arange(10).repeat_interleave(per_class)
    gen = torch.Generator().manual_seed(seed)
    x = ddim_sample(net, schedule, y, (len(y), 3, size, size), steps=50, guidance=0.0, generator=gen)
    images = resize_uint8(to_uint8(x), CLASSIFIER_SIZE)
    fake = features(classifier, images)
    preds = classifier.predict_all(images)
    out = {}
    for group, classes in groups.items():
        r = torch.isin(real_labels, torch.tensor(classes))
        f = torch.isin(y, torch.tensor(classes))
        pr = precision_recall(real_feats[r], fake[f], k=5)
        acc = 100.0 * float((preds[f] == y[f]).float().mean())
        out[group] = {"fid": fid_from_features(real_feats[r], fake[f]), "recall": pr["recall"], "acc": acc}
    return out


def render(results: dict, seeds: list[int], args, clf_acc: float, groups: dict, counts: list[int]) -> str:
    lines = [
        "# Quickstart study: DDPM vs DDPM + PCL vs CBDM on digits_lt (CPU)",
        "",
        f"Tiny UNet, {args.steps} steps, batch 64, seeds {seeds}; {args.per_class} DDIM-50 samples per class, w = 0.",
        f"Training counts per class (imb 0.1): {counts}; shot groups {groups}.",
        f"Feature space: ResNet-20 digits classifier (held-out accuracy {clf_acc:.1f}%), pooled 64-d features.",
        "FID / recall against the balanced digits of the same classes; acc = the classifier's accuracy on the",
        "generated images of those classes. Mean ± spread (half the range) over seeds where more than one.",
        "",
        "| Method | FID many ↓ | FID med ↓ | FID few ↓ | recall few ↑ | acc many ↑ | acc few ↑ |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(per_seed: list[dict], group: str, key: str, fmt: str = "{:.2f}") -> str:
        v = np.array([r[group][key] for r in per_seed])
        spread = f" ± {(v.max() - v.min()) / 2:.2f}" if len(v) > 1 else ""
        return fmt.format(v.mean()) + spread

    for name, runs in results.items():
        lines.append(
            f"| {name} | {cell(runs, 'many', 'fid')} | {cell(runs, 'med', 'fid')} | {cell(runs, 'few', 'fid')} | "
            f"{cell(runs, 'few', 'recall')} | {cell(runs, 'many', 'acc', '{:.1f}')} | "
            f"{cell(runs, 'few', 'acc', '{:.1f}')} |"
        )
    return "\n".join([*lines, ""])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=None, help="default: the quickstart's trainer.max_steps")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--classifier-epochs", type=int, default=15)
    p.add_argument("--runs", type=Path, default=Path("logs/quickstart_study"))
    p.add_argument("--out", type=Path, default=Path("experiments/results/quickstart_study.md"))
    args = p.parse_args()
    if args.steps is None:
        args.steps = int(QUICKSTART.trainer.max_steps)
    start = time.monotonic()
    classifier, clf_acc = train_feature_classifier(args.classifier_epochs)
    print(f"feature classifier: held-out accuracy {clf_acc:.1f}%", flush=True)
    full = load_digits(CLASSIFIER_SIZE)
    real_feats, real_labels = features(classifier, full.images), full.labels
    counts = longtail_counts(int(torch.bincount(full.labels).max()), 10, 0.1)
    groups = shot_groups(counts)
    results = {name: [] for name in METHODS}
    for seed in args.seeds:
        for name, overrides in METHODS.items():
            slug = name.split()[0].lower() + ("_pcl" if "PCL" in name else "")
            ckpt = train_model(name, overrides, args.runs / f"{slug}_seed{seed}", args.steps, seed)
            results[name].append(
                score(ckpt, classifier, real_feats, real_labels, groups, args.per_class, seed)
            )
    md = render(results, args.seeds, args, clf_acc, groups, counts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md + f"\nTotal time {time.monotonic() - start:.0f} s.\n")
    print(md)


if __name__ == "__main__":
    main()
