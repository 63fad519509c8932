"""Scores of a classifier and the image sets it is scored on (paper Table 3; the digits probe), and a classifier
file read back to score generated samples (src/eval.py's ``eval.classifier_ckpt``)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffrop.data.datasets import ImageSet


def classification_metrics(preds: Tensor, targets: Tensor, num_classes: int) -> dict[str, float]:
    """Accuracy, macro precision and macro recall, in percent.

    Macro = unweighted mean over the ``num_classes`` classes; a class that is never predicted has precision 0
    (scikit-learn's ``zero_division=0``), a class absent from ``targets`` is left out of the recall mean.
    """
    confusion = torch.bincount(targets * num_classes + preds, minlength=num_classes**2).view(
        num_classes, num_classes
    )
    tp = confusion.diag().double()
    predicted, actual = confusion.sum(0).double(), confusion.sum(1).double()
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = tp[actual > 0] / actual[actual > 0]
    return {
        "accuracy": 100.0 * float(tp.sum() / len(targets)),
        "macro_precision": 100.0 * float(precision.mean()),
        "macro_recall": 100.0 * float(recall.mean()),
    }


def shot_accuracy(preds: Tensor, targets: Tensor, groups: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """Per shot group (many / med / few, ``diffrop.data.longtail.shot_groups``), the share (0-1) of the samples of
    its classes predicted as their own class: a mean over samples, not over classes. NaN for a group without samples.
    """
    preds, targets = preds.cpu(), targets.cpu()
    correct = (preds == targets).double()
    return {
        group: correct[torch.isin(targets, torch.as_tensor(list(classes), dtype=targets.dtype))].mean().item()
        for group, classes in groups.items()
    }


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """A classifier file: TorchScript (``torch.jit.save``) or a whole pickled ``nn.Module`` (``torch.save(model)``),
    whose forward maps uint8 images [B, C, H, W] to logits [B, num_classes]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"eval.classifier_ckpt={path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is flagged deprecated
            return torch.jit.load(str(path), map_location=device).eval()
    except RuntimeError:
        model = torch.load(path, map_location=device, weights_only=False)
    if not isinstance(model, torch.nn.Module):
        raise ValueError(
            f"{path} is neither TorchScript nor a pickled nn.Module (got {type(model).__name__}); save the "
            "classifier with torch.jit.save(torch.jit.script(model), path) taking uint8 images to logits"
        )
    return model.eval()


@torch.no_grad()
def classify_accuracy(
    classifier: torch.nn.Module,
    images: Tensor,
    labels: Tensor,
    groups: Mapping[str, Sequence[int]],
    batch_size: int = 500,
) -> dict[str, Any]:
    """How often a class-c sample is recognised as c: {"overall": acc, "per_shot": {group: acc}, "per_class":
    [acc of class 0, ...]} (None for a class without samples)."""
    device = next(iter(classifier.parameters()), torch.empty(0)).device
    preds = torch.cat([classifier(b.to(device)).argmax(1).cpu() for b in images.split(batch_size)])
    correct = (preds == labels.cpu()).double()
    y = labels.cpu()
    num_classes = 1 + max(c for members in groups.values() for c in members)  # the groups cover every class
    per_class = [correct[y == c].mean().item() if (y == c).any() else None for c in range(num_classes)]
    return {
        "overall": correct.mean().item(),
        "per_shot": shot_accuracy(preds, y, groups),
        "per_class": per_class,
    }


def load_generated(path: str | Path, num_classes: int, limit: int | None = None) -> ImageSet:
    """Generated images from src/eval.py's ``samples.npz`` (uint8 NHWC ``images`` and ``labels``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"generated samples {path} not found; run src/eval.py on a checkpoint first")
    with np.load(path) as blob:
        if "images" not in blob or "labels" not in blob:
            raise ValueError(
                f"{path} holds {sorted(blob.files)}; expected 'images' (N, H, W, C uint8) and 'labels'"
            )
        images, labels = blob["images"][:limit], blob["labels"][:limit]
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"{path}: images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{path}: labels outside [0, {num_classes}) — generated for another dataset?")
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    return ImageSet(tensor, torch.as_tensor(labels, dtype=torch.long), [str(c) for c in range(num_classes)])


def split_per_class(full: ImageSet, test_fraction: float, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """A held-out test split, the same fraction of every class (for sources without one, e.g. digits)."""
    rng = np.random.default_rng(seed)
    labels = full.labels.numpy()
    test = [
        idx[: round(test_fraction * len(idx))]
        for c in np.unique(labels)
        for idx in [rng.permutation(np.flatnonzero(labels == c))]
    ]
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return full.subset(train_idx), full.subset(test_idx)
