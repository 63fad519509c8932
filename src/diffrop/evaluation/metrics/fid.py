"""Frechet Inception Distance (Heusel et al. 2017) of two feature sets; torch-fidelity's computation."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from diffrop.evaluation.metrics.base import Context, Features, Metric, NoSettings, as_matrix


def feature_stats(features: Features) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] (as ``np.cov(f, rowvar=False)``), float64.

    Computed with torch on the features' device, so 50k x 2048 features on a GPU take well under a second.
    """
    x = as_matrix(features, torch.float64)
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {x.shape[0]}")
    mu = x.mean(0)
    xc = x - mu
    sigma = xc.T @ xc / (x.shape[0] - 1)
    return mu.cpu().numpy(), sigma.cpu().numpy()


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance of two Gaussians (Heusel et al. 2017, Eq. 6; Dowson & Landau 1982).

    d^2 = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}). The trace of the square root is taken as
    sum_i sqrt(lambda_i(S1 S2)): S1 S2 is similar to the PSD matrix S1^{1/2} S2 S1^{1/2}, so its eigenvalues
    are real and >= 0 and no matrix square root (scipy ``sqrtm``, slow and fragile) is needed. This is
    torch-fidelity's computation; round-off imaginary / negative parts are dropped by taking the real part.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"shape mismatch: mu1 {mu1.shape}, mu2 {mu2.shape}, sigma1 {sigma1.shape}, sigma2 {sigma2.shape}; "
            "both statistics must come from features of the same dimension"
        )
    diff = mu1 - mu2
    eigenvalues = np.linalg.eigvals(sigma1 @ sigma2).astype(np.complex128)
    tr_covmean = np.sqrt(eigenvalues).real.sum()
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def fid_from_features(features1: Features, features2: Features) -> float:
    """FID between two feature sets (pool3, 2048-d, for the standard Inception FID)."""
    return frechet_distance(*feature_stats(features1), *feature_stats(features2))


def _score(real: Tensor, fake: Tensor, logits: Tensor | None, s: NoSettings, c: Context) -> dict:
    return {"fid": fid_from_features(real, fake)}


METRIC = Metric("fid", "FID", ("fid",), _score, per_shot=("fid",))
