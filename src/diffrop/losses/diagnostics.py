"""Is PCL active in this run? Two readings, taken on logging steps only (nothing runs on other steps).

- ``pcl/grad_ratio``: |dL_pcl / d eps_hat| / |dL_ddpm / d eps_hat|, the strength of the PCL pull on the network's
  outputs relative to the denoising loss (every other term gets its own ``<term>/grad_ratio``, e.g. CBDM's).
  eps_hat is every output of the step: the main forward's and each extra forward's (``Step.extra_forwards``:
  PCL's partner / same_xt forward and CBDM's receive as much PCL gradient as the anchor's, so reading the main
  output alone under-states a two-forward term by sqrt(2)). Through DiffROP Eq. 9 the PCL gradient reaching eps_hat is scaled by
  (1 - alpha_t) / sqrt(alpha_t (1 - abar_t)) <= ~0.02, so at equal weights PCL can be negligible; ~0.01 means
  negligible, ~1 balanced, >> 1 dominant. Both gradients come from ``torch.autograd.grad`` through the loss
  computation only: the network is neither re-run nor back-propagated.
- ``pcl/d_between`` and ``pcl/d_within``: the mean distance (the PCL term's own d_ij, mean over pixels) between
  posterior means mu (Eq. 9) of samples with different labels and with the same label. PCL pushes the first up;
  the within-class value is the yardstick. When the step shares (t, eps) in groups (PCL pairing eq12), only pairs
  inside a group count, so the noise cancels (Eq. 12); otherwise both include the x_t noise and only their gap
  is class signal.
- ``eps_slope``: <eps_hat, eps> / <eps, eps> over the batch, the least-squares slope of the network's noise
  estimate on the true noise. A term that widens every posterior mean does so by predicting less noise, which
  shows as a slope below a DDPM run's.

Logged for every loss (DDPM runs too), so a baseline and a PCL run can be compared on the same dashboard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from diffrop.losses.pcl import group_neighbours, pairwise_sq_dist, sq_dist
from diffrop.losses.step import Step

DENOISING = ("ddpm", "ddpm_partner")  # the terms whose sum is the DDPM loss (the ratios' denominator)


def grad_norm(term: Tensor, wrt: Tensor | Sequence[Tensor]) -> Tensor:
    """|d term / d wrt| (Frobenius norm over the batch and over every tensor of ``wrt``), keeping the graph for
    the training backward."""
    wrt = [wrt] if isinstance(wrt, Tensor) else list(wrt)
    zero = wrt[0].new_zeros((), dtype=torch.float32)
    if not term.requires_grad:
        return zero
    grads = torch.autograd.grad(term, wrt, retain_graph=True, allow_unused=True)
    return torch.stack([zero, *(g.float().square().sum() for g in grads if g is not None)]).sum().sqrt()


def class_distances(step: Step) -> dict[str, Tensor]:
    """Mean d_ij over different-label pairs and over same-label pairs (i != j) of conditioned samples (of one
    group, when the step has groups: from the pairs' differences, as PCL's Eq. 12 pairs, since their small d is
    lost in the |a|^2 + |b|^2 - 2 a.b expansion)."""
    with torch.no_grad():
        mu = step.mu.detach().flatten(1)
        y, cond = step.y, step.cond
        if step.group is None:  # every pair; d is dominated by the two noises
            d = pairwise_sq_dist(mu)
            j = torch.arange(len(y), device=y.device).expand(len(y), -1)
            ok = ~torch.eye(len(y), dtype=torch.bool, device=y.device)
        else:
            j, ok = group_neighbours(len(y), step.group_size, y.device)
            ok &= step.group[j] == step.group[:, None]
            d = sq_dist(mu[:, None], mu[j])
        ok &= cond[:, None] & cond[j]
        same = y[j] == y[:, None]
        d = d / mu.shape[1]
        out = {}
        for name, mask in (("d_between", ok & ~same), ("d_within", ok & same)):
            out[f"pcl/{name}"] = torch.where(mask, d, 0.0).sum() / mask.sum().clamp_min(1)
        return out


def loss_diagnostics(step: Step, parts: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The values above: class distances and eps slope always, ``<term>/grad_ratio`` beside a ``ddpm`` term."""
    out = class_distances(step)
    with torch.no_grad():
        eps = step.eps.float()
        out["eps_slope"] = (step.eps_hat.detach().float() * eps).sum() / eps.square().sum().clamp_min(1e-12)
    if "ddpm" not in parts:
        return out
    outputs = step.outputs  # the main forward's eps_hat and every extra forward's
    denoising = sum(parts[name] for name in DENOISING if name in parts)  # the DDPM loss, over every output
    ddpm = grad_norm(denoising, outputs).clamp_min(torch.finfo(torch.float32).tiny)
    for name, value in parts.items():
        if name not in DENOISING:
            out[f"{name}/grad_ratio"] = grad_norm(value, outputs) / ddpm
    return out
