"""Scores within class subsets: per shot group (paper Table 2) and per class (the per-class plot)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from diffrop.evaluation.metrics.base import Features, as_matrix
from diffrop.evaluation.metrics.fid import fid_from_features
from diffrop.evaluation.metrics.prc import precision_recall


def per_group(
    fn: Callable[[Tensor, Tensor], Any],
    real: Features,
    real_labels: Features,
    fake: Features,
    fake_labels: Features,
    groups: Mapping[str, Sequence[int]],
) -> dict[str, Any]:
    """{group: fn(real rows of the group's classes, fake rows of those classes)} (paper Table 2 per-shot)."""
    real_t, fake_t = as_matrix(real), as_matrix(fake)
    real_y, fake_y = (
        torch.as_tensor(real_labels).to(real_t.device),
        torch.as_tensor(fake_labels).to(fake_t.device),
    )
    if real_y.shape != (real_t.shape[0],) or fake_y.shape != (fake_t.shape[0],):
        raise ValueError("labels must be 1-D with one label per feature row")
    out = {}
    for name, classes in groups.items():
        real_g = real_t[torch.isin(real_y, torch.as_tensor(list(classes), device=real_y.device))]
        fake_g = fake_t[torch.isin(fake_y, torch.as_tensor(list(classes), device=fake_y.device))]
        if len(real_g) < 2 or len(fake_g) < 2:
            raise ValueError(
                f"group {name!r} (classes {list(classes)}) has {len(real_g)} real and {len(fake_g)} fake samples; "
                "each needs at least 2 (check the labels and the group definition)"
            )
        out[name] = fn(real_g, fake_g)
    return out


def per_class(
    real: Features,
    real_labels: Features,
    fake: Features,
    fake_labels: Features,
    num_classes: int,
    *,
    k: int | None,
    min_fid_samples: int,
    chunk: int = 10000,
) -> dict[str, list[float | None]]:
    """Scores of each class's generated samples against the same class's references, as lists indexed by class.

    The long-tail picture (a tail class's recall against its training count): ``precision`` / ``recall`` where
    both sides have more than ``k`` samples (nowhere when ``k`` is None), ``fid`` where both have at least
    ``min_fid_samples`` (a covariance from fewer than that many 2048-d features is mostly noise), None elsewhere;
    ``num_real`` / ``num_fake``.
    """
    real_t, fake_t = as_matrix(real), as_matrix(fake)
    real_y, fake_y = (
        torch.as_tensor(real_labels).to(real_t.device),
        torch.as_tensor(fake_labels).to(fake_t.device),
    )
    out: dict[str, list] = {"precision": [], "recall": [], "fid": [], "num_real": [], "num_fake": []}
    for c in range(num_classes):
        real_c, fake_c = real_t[real_y == c], fake_t[fake_y == c]
        n = min(len(real_c), len(fake_c))
        pr = precision_recall(real_c, fake_c, k=k, chunk=chunk) if k is not None and n > k else {}
        out["precision"].append(pr.get("precision"))
        out["recall"].append(pr.get("recall"))
        out["fid"].append(fid_from_features(real_c, fake_c) if n >= max(min_fid_samples, 2) else None)
        out["num_real"].append(len(real_c))
        out["num_fake"].append(len(fake_c))
    return out
