"""Improved precision and recall (Kynkaanniemi et al. 2019): k-NN balls around each set's samples."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffrop.evaluation.metrics.base import Context, Features, Metric, Sizes, as_matrix, positive


def knn_radii(features: Tensor, k: int, chunk: int = 10000) -> Tensor:
    """Distance of every row to its k-th nearest neighbour in the same set, the row itself excluded.

    Chunked over rows: the peak is one [chunk, N] distance block. The (k+1)-th smallest distance is taken
    because each row's smallest distance is the 0 to itself.
    """
    n = features.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, N-1] = [1, {n - 1}] for the k-NN radius, got k={k}")
    return torch.cat(
        [
            torch.cdist(block, features).topk(k + 1, dim=1, largest=False).values[:, -1]
            for block in features.split(chunk)
        ]
    )


def _fraction_inside(points: Tensor, centres: Tensor, radii: Tensor, chunk: int) -> float:
    """Share of ``points`` inside at least one ball B(centre_j, radius_j) (closed ball, as in the paper)."""
    inside = [(torch.cdist(block, centres) <= radii).any(dim=1) for block in points.split(chunk)]
    return torch.cat(inside).double().mean().item()


def precision_recall(
    real: Features, fake: Features, k: int = 5, chunk: int = 10000, dtype: torch.dtype = torch.float64
) -> dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, Eq. 1-3).

    The manifold of a set is the union of balls around its samples with radius = distance to the k-th
    nearest neighbour (self excluded). precision = share of fake samples inside the real manifold, recall =
    share of real samples inside the fake manifold. Distances are computed block-wise with ``torch.cdist``
    on the features' device (a GPU if either set lives on one): peak memory is O(chunk x N) elements, never
    the dense N x N matrix (chunk = 10000, N = 50000 in float64: 4 GB per block). ``dtype`` float64 keeps
    the ball-membership test free of float32 / TF32 round-off; float32 halves memory and time.
    """
    real_t, fake_t = as_matrix(real), as_matrix(fake)
    if real_t.shape[1] != fake_t.shape[1]:
        raise ValueError(f"feature dims differ: real {real_t.shape[1]}, fake {fake_t.shape[1]}")
    device = real_t.device if real_t.is_cuda else fake_t.device
    real_t, fake_t = real_t.to(device, dtype), fake_t.to(device, dtype)
    precision = _fraction_inside(fake_t, real_t, knn_radii(real_t, k, chunk), chunk)
    recall = _fraction_inside(real_t, fake_t, knn_radii(fake_t, k, chunk), chunk)
    return {"precision": precision, "recall": recall}


@dataclass(frozen=True)
class Settings:
    k: int  # the k-NN neighbourhood (Kynkaanniemi et al. 2019: 5); also of the per-class scores

    def __post_init__(self) -> None:
        positive("precision_recall", k=self.k)


def _check(s: Settings, sizes: Sizes) -> None:
    """Per shot group, both sets need more than k samples for a k-NN radius."""
    for group, counts in sizes.groups.items():
        for what, count in zip(("generated", "reference"), counts, strict=True):
            if count <= s.k:
                raise ValueError(
                    f"shot group {group!r} has {count} {what} samples, need more than "
                    f"eval.metrics.precision_recall.k={s.k} for per-shot precision / recall; raise "
                    "eval.num_samples (or eval.reference_per_class)"
                )


def _score(real: Tensor, fake: Tensor, logits: Tensor | None, s: Settings, c: Context) -> dict:
    return precision_recall(real, fake, k=s.k)


METRIC = Metric(
    "precision_recall",
    "precision / recall",
    ("precision", "recall"),
    _score,
    Settings,
    _check,
    detail=lambda s, num_classes: f"k={s.k}",
    per_shot=("precision", "recall"),
)
