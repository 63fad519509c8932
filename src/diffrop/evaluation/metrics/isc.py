"""Inception Score (Salimans et al. 2016) of the generated set's classifier logits; torch-fidelity's computation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from diffrop.evaluation.metrics.base import Context, Features, Metric, Sizes, as_matrix, positive


def inception_score(
    logits: Features, splits: int = 10, shuffle: bool = True, seed: int = 2020
) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), mean and std over ``splits``.

    p(y) is the marginal within each split. Same computation as torch-fidelity (float64 softmax of the
    unbiased logits, rows shuffled with NumPy seed 2020, population std), so the numbers agree with it;
    classes whose probability underflows to 0 contribute 0 (0 log 0) instead of torch-fidelity's NaN.
    """
    x = as_matrix(logits, torch.float64)
    n = x.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"splits must be in [1, N={n}], got {splits}")
    if shuffle:
        x = x[torch.as_tensor(np.random.RandomState(seed).permutation(n), device=x.device)]
    log_p = x.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        log_p_chunk = log_p[i * n // splits : (i + 1) * n // splits]
        p_chunk = log_p_chunk.exp()
        log_marginal = p_chunk.mean(0, keepdim=True).log()
        terms = torch.where(p_chunk > 0, p_chunk * (log_p_chunk - log_marginal), 0.0)  # 0 log 0 = 0
        kl = terms.sum(1).mean()
        scores.append(kl.exp().item())
    return float(np.mean(scores)), float(np.std(scores))


@dataclass(frozen=True)
class Settings:
    splits: int

    def __post_init__(self) -> None:
        positive("inception_score", splits=self.splits)


def _check(s: Settings, sizes: Sizes) -> None:
    if sizes.generated < s.splits:
        raise ValueError(
            f"eval.num_samples={sizes.generated} is below eval.metrics.inception_score.splits={s.splits}"
        )


def _score(real: Tensor, fake: Tensor, logits: Tensor | None, s: Settings, c: Context) -> dict:
    mean, std = inception_score(logits, s.splits)
    return {"is_mean": mean, "is_std": std}


METRIC = Metric(
    "inception_score", "Inception Score", ("is_mean", "is_std"), _score, Settings, _check, needs_logits=True
)
