"""Kernel Inception Distance (Binkowski et al. 2018): the unbiased squared MMD of the cubic polynomial kernel,
averaged over random subset pairs (torch-fidelity's protocol and numbers)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from diffrop.evaluation.metrics.base import Context, Features, Metric, as_matrix, positive


def polynomial_kernel(x: Tensor, y: Tensor, degree: int = 3, coef0: float = 1.0) -> Tensor:
    """k(x, y) = (x . y / d + coef0)^degree, [N, M] (d = feature dim): KID's kernel (Binkowski et al. 2018)."""
    return (x @ y.T / x.shape[1] + coef0) ** degree


def mmd2_unbiased(real: Features, fake: Features) -> float:
    """Unbiased estimate of the squared MMD with the cubic polynomial kernel (Binkowski et al. 2018,
    "Demystifying MMD GANs"; Gretton et al. 2012's unbiased estimator):
    the within-set means leave out the diagonal k(x_i, x_i), the cross term averages all pairs; its
    expectation is 0 when both sets come from the same distribution, at any set size. float64 on the
    features' device.
    """
    x, y = as_matrix(real, torch.float64), as_matrix(fake, torch.float64)
    device = y.device if y.is_cuda else x.device
    x, y = x.to(device), y.to(device)
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"need two [N >= 2, D] feature sets of the same D, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    k_xx, k_yy = polynomial_kernel(x, x), polynomial_kernel(y, y)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2 * polynomial_kernel(x, y).mean())


def kernel_inception_distance(
    real: Features, fake: Features, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float | None]:
    """KID (Binkowski et al. 2018): mean and (population) std of ``mmd2_unbiased`` over ``subsets`` pairs of
    random subsets of ``subset_size`` rows, drawn without replacement from each set. torch-fidelity's protocol
    and numbers (``kid_features_to_metric``: NumPy ``RandomState(seed)``, the first set's subset drawn first),
    except that the subset size is capped at the smaller set instead of refused, for per-shot groups.

    The std is None when a set fits in one subset (e.g. ``num_samples <= subset_size``): every subset then holds
    that whole set, so the spread says nothing about it (and is exactly 0 when both sets fit).
    """
    real_t, fake_t = as_matrix(real), as_matrix(fake)
    size = min(subset_size, real_t.shape[0], fake_t.shape[0])
    if subsets < 1 or size < 2:
        raise ValueError(f"need subsets >= 1 and at least 2 rows per set, got {subsets=} and {size} rows")
    rng = np.random.RandomState(seed)
    values = []
    for _ in range(subsets):
        pick_real = torch.as_tensor(rng.choice(real_t.shape[0], size, replace=False), device=real_t.device)
        pick_fake = torch.as_tensor(rng.choice(fake_t.shape[0], size, replace=False), device=fake_t.device)
        values.append(mmd2_unbiased(real_t[pick_real], fake_t[pick_fake]))
    whole = size in (real_t.shape[0], fake_t.shape[0])
    return float(np.mean(values)), None if whole else float(np.std(values))


@dataclass(frozen=True)
class Settings:
    subsets: int
    subset_size: int  # capped at a per-shot group's size

    def __post_init__(self) -> None:
        positive("kid", subsets=self.subsets, subset_size=self.subset_size)


def _score(real: Tensor, fake: Tensor, logits: Tensor | None, s: Settings, c: Context) -> dict:
    mean, std = kernel_inception_distance(real, fake, s.subsets, s.subset_size, c.seed)
    return {"kid": mean, "kid_std": std}


METRIC = Metric(
    "kid",
    "KID",
    ("kid", "kid_std"),
    _score,
    Settings,
    detail=lambda s, num_classes: f"{s.subsets} subsets",
    per_shot=("kid",),  # unbiased, so comparable across the groups' unequal sizes (unlike FID)
)
