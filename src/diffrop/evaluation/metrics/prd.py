"""Precision and recall for distributions, PRD (Sajjadi et al. 2018): F_8 / F_1/8 from k-means cluster histograms,
following the reference code (``compute_prd_from_embedding``, ``prd_to_max_f_beta_pair``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import MiniBatchKMeans
from torch import Tensor

from diffrop.evaluation.metrics.base import Context, Features, Metric, Sizes, as_matrix, positive


def prd_curve(eval_dist: np.ndarray, ref_dist: np.ndarray, num_angles: int = 1001, epsilon: float = 1e-10):
    """PRD curve of two histograms (Sajjadi et al. 2018, Thm. 2): for slope lambda = tan(angle),
    alpha(lambda) = sum_i min(lambda * ref_i, eval_i), beta(lambda) = alpha(lambda) / lambda.

    Returns (precision, recall), each [num_angles], over angles equally spaced in [eps, pi/2 - eps].
    """
    slopes = np.tan(np.linspace(epsilon, np.pi / 2 - epsilon, num_angles))
    precision = np.minimum(ref_dist[None, :] * slopes[:, None], eval_dist[None, :]).sum(axis=1)
    return precision, precision / slopes


def f_beta_score(
    precision: np.ndarray, recall: np.ndarray, beta: float, epsilon: float = 1e-10
) -> np.ndarray:
    """F_beta = (1 + beta^2) p r / (beta^2 p + r) (Sajjadi et al. 2018, Sec. 4; eps as in their code)."""
    return (1 + beta**2) * precision * recall / (beta**2 * precision + recall + epsilon)


# sklearn: the reference code's MiniBatchKMeans, the default wherever the features are. torch: an explicit opt-in
# (fast on a GPU) whose F_8 is not the reference's under the paper protocol (README, "eval.metrics.prd.kmeans").
KMEANS_BACKENDS = ("sklearn", "torch")


def check_kmeans(kmeans: str) -> str:
    if kmeans not in KMEANS_BACKENDS:
        raise ValueError(f"kmeans must be one of {KMEANS_BACKENDS}, got {kmeans!r}")
    return kmeans


def cluster_labels(union: Features, num_clusters: int, seed: int, kmeans: str = "sklearn") -> np.ndarray:
    """k-means labels [N] of the rows of ``union`` (one PRD run), by the backend ``kmeans``:

    ``sklearn``: the reference code's ``MiniBatchKMeans(n_init=10)`` (CPU, float64); ``torch``:
    ``metrics.kmeans.kmeans`` on the features' device (the same seeding protocol, then full-batch Lloyd).
    """
    if check_kmeans(kmeans) == "torch":
        from diffrop.evaluation.metrics.kmeans import kmeans as torch_kmeans

        u = as_matrix(union)
        dtype = u.dtype if u.dtype in (torch.float32, torch.float64) else torch.float32
        return torch_kmeans(u.to(dtype), num_clusters, n_init=10, seed=seed)[0].cpu().numpy()
    x = union.detach().cpu().numpy() if isinstance(union, Tensor) else np.asarray(union)
    return (
        MiniBatchKMeans(n_clusters=num_clusters, n_init=10, random_state=seed)
        .fit(x.astype(np.float64, copy=False))
        .labels_
    )


def prd_f_beta(
    real: Features,
    fake: Features,
    num_clusters: int,
    num_runs: int = 10,
    num_angles: int = 1001,
    beta: float = 8.0,
    seed: int = 0,
    kmeans: str = "sklearn",
) -> tuple[float, float]:
    """(F_beta, F_1/beta) of fake w.r.t. real, following Sajjadi et al.'s reference code
    (``compute_prd_from_embedding`` then ``prd_to_max_f_beta_pair``).

    Each run clusters the union of both sets into ``num_clusters`` (20 x C in docs/design.md) and takes the two
    cluster histograms; the PRD curves of the runs are averaged, then F_beta / F_1/beta are the maxima over
    the averaged curve. F_8 tracks recall, F_1/8 precision. ``kmeans`` picks the clustering (``cluster_labels``):
    ``sklearn`` is the reference code's ``MiniBatchKMeans(n_init=10)``, ``torch`` k-means on the features' device.
    Sets of unequal size are subsampled (seeded) to the smaller size, since the reference code rejects unequal
    sets (an unbalanced union biases the clustering towards the larger set).
    """
    real_t, fake_t = as_matrix(real), as_matrix(fake)
    device = real_t.device if real_t.is_cuda else fake_t.device
    backend = check_kmeans(kmeans)
    rng = np.random.RandomState(seed)
    n = min(len(real_t), len(fake_t))
    if len(real_t) > n:
        real_t = real_t[
            torch.as_tensor(np.sort(rng.choice(len(real_t), n, replace=False)), device=real_t.device)
        ]
    if len(fake_t) > n:
        fake_t = fake_t[
            torch.as_tensor(np.sort(rng.choice(len(fake_t), n, replace=False)), device=fake_t.device)
        ]
    if not 1 <= num_clusters <= 2 * n:
        raise ValueError(f"num_clusters must be in [1, {2 * n}] for {n} + {n} samples, got {num_clusters}")

    if backend == "torch":
        union: Features = torch.cat([fake_t.to(device), real_t.to(device)])
    else:
        union = np.concatenate([t.detach().cpu().numpy().astype(np.float64) for t in (fake_t, real_t)])
    curves = []
    for run in range(num_runs):
        labels = cluster_labels(union, num_clusters, seed + run, backend)
        eval_dist = np.bincount(labels[:n], minlength=num_clusters) / n
        ref_dist = np.bincount(labels[n:], minlength=num_clusters) / n
        curves.append(prd_curve(eval_dist, ref_dist, num_angles))
    precision, recall = np.mean(curves, axis=0)
    return (
        float(f_beta_score(precision, recall, beta).max()),
        float(f_beta_score(precision, recall, 1.0 / beta).max()),
    )


@dataclass(frozen=True)
class Settings:
    clusters_per_class: int  # k-means into this x C clusters (Sajjadi et al. 2018: 20)
    runs: int
    kmeans: str  # KMEANS_BACKENDS

    def __post_init__(self) -> None:
        positive("prd", clusters_per_class=self.clusters_per_class, runs=self.runs)
        if self.kmeans not in KMEANS_BACKENDS:
            raise ValueError(f"eval.metrics.prd.kmeans={self.kmeans!r} is not one of {list(KMEANS_BACKENDS)}")


def _check(s: Settings, sizes: Sizes) -> None:
    n = min(sizes.generated, sizes.reference)
    clusters = s.clusters_per_class * sizes.num_classes
    if clusters > 2 * n:
        raise ValueError(
            f"F_8 / F_1/8 cluster {n} generated + {n} reference features into {clusters} = "
            f"eval.metrics.prd.clusters_per_class ({s.clusters_per_class}) x {sizes.num_classes} classes, more "
            f"than the {2 * n} points; raise eval.num_samples or lower eval.metrics.prd.clusters_per_class"
        )


def _score(real: Tensor, fake: Tensor, logits: Tensor | None, s: Settings, c: Context) -> dict:
    f_8, f_1_8 = prd_f_beta(
        real, fake, s.clusters_per_class * c.num_classes, s.runs, seed=c.seed, kmeans=s.kmeans
    )
    return {"f_8": f_8, "f_1_8": f_1_8}


METRIC = Metric(
    "prd",
    "F_8 / F_1/8",
    ("f_8", "f_1_8"),
    _score,
    Settings,
    _check,
    detail=lambda s, num_classes: f"{s.runs} k-means runs of {s.clusters_per_class * num_classes} clusters",
)
