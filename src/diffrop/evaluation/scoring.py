"""One generated set scored, once every rank's shards are in: its grid, its features, every chosen score
(``metrics.suite.compute_all``), the per-class scores and, with a classifier, its accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffrop.diffusion.sampling import SamplerSpec
from diffrop.evaluation.classification import classify_accuracy
from diffrop.evaluation.generate import merge_shards, save_grid, wait_for_shards
from diffrop.evaluation.metrics import Context, compute_all, per_class
from diffrop.evaluation.reference_set import Extractor, rgb
from diffrop.evaluation.settings import EvalSettings
from diffrop.runtime.progress import emit, ticking


def score_set(
    s: EvalSettings,
    spec: SamplerSpec,
    folder: Path,
    shards: list[Path],
    reference: tuple[Tensor, Tensor],
    extractor: Extractor,
    classifier: torch.nn.Module | None,
    groups: dict[str, list[int]],
    num_classes: int,
) -> dict[str, Any]:
    """One run of results.json: ``metrics``, ``per_class``, the sampler, the set's size and label counts."""
    wait_for_shards(shards)
    images, fake_labels, _ = merge_shards(shards, folder / "samples.npz")
    save_grid(images, fake_labels, folder / "grid.png", per_class=s.grid_per_class)
    stage = ["features of the generated set"]  # what ``ticking`` names while a stage runs for minutes

    def begin(name: str) -> None:
        stage[0] = f"scoring: {name}"
        emit(stage[0])

    with ticking(lambda: stage[0], enabled=s.progress):
        fake_feats, fake_logits = extractor.extract(rgb(images), s.feature_batch_size, s.progress)
        real_feats, real_labels = reference[0].to(fake_feats.device), reference[1]  # k-NN distances on a GPU
        metrics = compute_all(
            real_feats, real_labels, fake_feats, fake_logits, fake_labels, groups, s.metrics,
            Context(num_classes, s.seed), stage=begin if s.progress else (lambda name: None),
        )  # fmt: skip
        if s.progress:
            begin("per class")
        pr = s.metrics.get("precision_recall")
        classes = per_class(  # the per-class plot's data (diffrop.evaluation.plots.plot_per_class)
            real_feats, real_labels, fake_feats, fake_labels, num_classes, k=pr.k if pr else None,
            min_fid_samples=s.per_class_fid_min_samples,
        )  # fmt: skip
    if classifier is not None:
        acc = classify_accuracy(classifier, images, fake_labels, groups)
        metrics["accuracy"] = acc["overall"]
        for group, value in acc["per_shot"].items():
            metrics.setdefault("per_shot", {}).setdefault(group, {})["accuracy"] = value
        classes["accuracy"] = acc["per_class"]
    return {
        "metrics": metrics,
        "per_class": classes,
        "sampler": spec.describe(),
        "num_samples": len(fake_labels),
        "label_counts": torch.bincount(fake_labels, minlength=num_classes).tolist(),
        "samples": str(folder / "samples.npz"),
    }
