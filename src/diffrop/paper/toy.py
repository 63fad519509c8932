"""The 1-D toy of DiffROP Sec. 5.1 / Fig. 2, computed exactly: no training, no sampling.

Data. Two classes with weights pi = (0.95, 0.05) and x0 | c ~ N(a_c, s^2), a = (0, 2).

Model. The class-conditional denoiser that is Bayes-optimal for x0 | c ~ N(m_c, s^2), with the mean m_c as the
only parameter (m1 = m_0 for the head class, m2 = m_1 for the tail class):
    eps_hat(x_t, t, c) = k_t (x_t - sqrt(abar_t) m_c),  k_t = sqrt(1 - abar_t) / sigma_t^2,
    sigma_t^2 = abar_t s^2 + 1 - abar_t  (the variance of x_t | c).
At m = a this is the exact E[eps | x_t, c], so the diffusion loss alone is minimised at (0, 2) and any shift of
the arg-min is caused by the PCL term.

Diffusion loss (DDPM eps-MSE, closed form). x0 - m_c = s z + (a_c - m_c) with z independent of eps, hence
    E (eps - eps_hat)^2 = abar_t s^2 / sigma_t^2 + k_t^2 abar_t (m_c - a_c)^2,
averaged over the classes (weights pi) and over the timesteps t in S (uniform, as training samples t).

Posterior mean (DiffROP Eq. 9, via ``NoiseSchedule.posterior_mean``) is linear in (x_t, eps_hat), so given c
    mu ~ N(C_t a_c + B_t m_c, S_t^2),   B_t = beta_t sqrt(abar_t) / (sigma_t^2 sqrt(alpha_t)),
and S_t does not depend on (m1, m2). Note the scale: B_t <= 0.0067 on the 1000-step linear schedule: one reverse
step moves mu by a few thousandths of the class parameter, so PCL's pull on the model is weak against the
diffusion loss unless tau is large (hence the default tau0 = 30 of the Fig. 2 script).

PCL term. tau(t_i / T) * phi(d_ij) over ordered cross-class pairs, weighted by their probability 2 pi_0 pi_1
(Algorithm 1's sum over pairs divided by B - 1; the code's ``pairs_mean`` divides by 2 pi_0 pi_1 instead, which
only rescales tau). Two definitions of d:
  - ``class_means`` (default): d = (E[mu | c=0, t] - E[mu | c=1, t])^2, the squared distance between the two
    classes' posterior means at the same t: the picture of Fig. 2 (two class distributions, two means). The
    within-class spread S_t is the same for every (m1, m2), so this isolates what phi does to the parameters.
  - ``pairs``: the population value of the sample-pair term the training code computes: i from class 0 at t_i,
    j from class 1 at t_j, independent x0 and eps, d = (mu_i - mu_j)^2 with mu_i - mu_j ~ N(delta, S_i^2 + S_j^2).
    E[phi(d)] is a 1-D Gaussian integral, taken by the trapezoid rule on z in [-8, 8] (error < 1e-5 even at the
    hinge's kink) on a fine table of delta and interpolated linearly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from diffrop.diffusion.schedule import NoiseSchedule
from diffrop.losses.pcl import PHI

DISTANCES = ("class_means", "pairs")
_Z = torch.linspace(-8.0, 8.0, 1601, dtype=torch.float64)  # trapezoid nodes for E f(Z), Z ~ N(0, 1)
_ZW = torch.exp(-0.5 * _Z**2) / math.sqrt(2 * math.pi) * (_Z[1] - _Z[0])  # pdf * step (tails < 1e-14)


@dataclass(frozen=True)
class Toy:
    """The data, the schedule and the timesteps the losses average over."""

    s: float = 0.5  # class standard deviation: classes 4 s apart, overlap ~2% of the tail mass
    weights: tuple[float, float] = (0.95, 0.05)
    means: tuple[float, float] = (0.0, 2.0)
    num_t: int = 10  # midpoint rule over [0, T): t_k = floor((k + 1/2) T / num_t)
    num_steps: int = 1000  # DDPM's linear schedule (Ho et al. 2020), as the paper trains
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def __post_init__(self) -> None:
        if not (math.isfinite(self.s) and self.s > 0):
            raise ValueError(f"toy s (class std) must be a finite number > 0, got {self.s!r}")
        if not (abs(sum(self.weights) - 1) < 1e-9 and min(self.weights) > 0):
            raise ValueError(f"toy weights must be two positive numbers summing to 1, got {self.weights!r}")
        if not 1 <= self.num_t <= self.num_steps:
            raise ValueError(f"toy num_t must be in [1, num_steps={self.num_steps}], got {self.num_t!r}")

    def timesteps(self) -> Tensor:
        k = torch.arange(self.num_t, dtype=torch.float64)
        return ((k + 0.5) * self.num_steps / self.num_t).floor().long()  # [K]

    def coefficients(self) -> dict[str, Tensor]:
        """Per-timestep constants [K] of the closed forms in the module docstring."""
        sched = NoiseSchedule(self.num_steps, self.beta_start, self.beta_end).double()
        t = self.timesteps()
        abar = sched.alpha_bars[t]
        sigma2 = abar * self.s**2 + 1 - abar
        k = (1 - abar).sqrt() / sigma2
        zero = torch.zeros_like(abar)
        # Eq. 9 is linear in (x_t, eps_hat): feed it the part of E[x_t], E[eps_hat] and the fluctuation that
        # multiplies a_c, m_c and a unit normal respectively.
        return {
            "t": t,
            "floor": abar * self.s**2 / sigma2,  # irreducible eps-MSE
            "curv": k**2 * abar,  # eps-MSE per unit (m_c - a_c)^2
            "C": sched.posterior_mean(abar.sqrt(), t, k * abar.sqrt()),  # E[mu | c] per unit a_c
            "B": sched.posterior_mean(zero, t, -k * abar.sqrt()),  # E[mu | c] per unit m_c
            "S": sched.posterior_mean(sigma2.sqrt(), t, k * sigma2.sqrt()).abs(),  # std of mu | c
        }


def diffusion_loss(toy: Toy, m1: Tensor, m2: Tensor) -> Tensor:
    """Exact expected eps-MSE at parameters (m1, m2) (any broadcastable shapes), averaged over t and classes."""
    c = toy.coefficients()
    out = 0.0
    for m, a, p in zip((m1, m2), toy.means, toy.weights, strict=True):
        m = torch.as_tensor(m, dtype=torch.float64)[..., None]  # [..., 1] against [K]
        out = out + p * (c["floor"] + c["curv"] * (m - a) ** 2).mean(-1)
    return out


def gaussian_expectation(f: Callable[[Tensor], Tensor], mean: Tensor, var: Tensor) -> Tensor:
    """E f(mean + sqrt(var) Z), Z ~ N(0, 1), elementwise over broadcast mean and var (trapezoid rule)."""
    x = mean[..., None] + var.sqrt()[..., None] * _Z
    return (f(x) * _ZW).sum(-1)


def _interp(x: Tensor, lo: Tensor, hi: Tensor, table: Tensor) -> Tensor:
    """Linear interpolation at x [..., K] of tables [K, n + 1] sampled uniformly on [lo, hi] ([K] each)."""
    n = table.shape[-1] - 1
    pos = ((x - lo) / (hi - lo) * n).clamp(0, n)
    i = pos.floor().long().clamp(max=n - 1)
    frac = pos - i
    rows = torch.arange(table.shape[0]).expand_as(i)
    return table[rows, i] * (1 - frac) + table[rows, i + 1] * frac


def pcl_loss(
    toy: Toy,
    m1: Tensor,
    m2: Tensor,
    phi: str,
    tau: Callable[[Tensor], Tensor],
    margin: float = 1.0,
    distance: str = "class_means",
    table_size: int = 129,
) -> Tensor:
    """2 pi_0 pi_1 E[tau(t_i / T) phi(d)] at parameters (m1, m2); ``tau`` maps s = t / T to a weight."""
    if phi not in PHI:
        raise ValueError(f"phi={phi!r} is not one of {list(PHI)}")
    if distance not in DISTANCES:
        raise ValueError(f"distance={distance!r} is not one of {list(DISTANCES)}")
    c = toy.coefficients()
    m1, m2 = (torch.as_tensor(m, dtype=torch.float64) for m in (m1, m2))
    m1, m2 = torch.broadcast_tensors(m1, m2)
    w = tau(c["t"].double() / toy.num_steps)  # [K]
    mean0 = c["C"] * toy.means[0] + c["B"] * m1[..., None]  # [..., K] E[mu | class 0, t]
    mean1 = c["C"] * toy.means[1] + c["B"] * m2[..., None]  # [..., K] E[mu | class 1, t]
    if distance == "class_means":
        value = (w * PHI[phi]((mean0 - mean1) ** 2, margin)).mean(-1)
    else:
        value = torch.zeros_like(m1)
        f = lambda x: PHI[phi](x**2, margin)  # noqa: E731
        for i in range(toy.num_t):  # anchor t_i; the partner's t_j runs over the last axis
            delta = (mean0[..., i : i + 1] - mean1).reshape(-1, toy.num_t)  # [N, K]
            lo, hi = delta.amin(0), delta.amax(0)
            hi = torch.maximum(hi, lo + 1e-12)
            frac = torch.linspace(0, 1, table_size, dtype=torch.float64)
            grid = lo[:, None] + (hi - lo)[:, None] * frac  # [K, n]
            var = (c["S"][i] ** 2 + c["S"] ** 2)[:, None].expand_as(grid)
            table = gaussian_expectation(f, grid, var)  # [K, n]
            value = value + w[i] * _interp(delta, lo, hi, table).sum(-1).reshape(m1.shape)
        value = value / toy.num_t**2
    return 2 * toy.weights[0] * toy.weights[1] * value


def argmin_2d(loss: Tensor, m1: Tensor, m2: Tensor) -> tuple[float, float]:
    """Grid arg-min of ``loss`` [len(m1), len(m2)] (indexing 'ij')."""
    i = int(torch.argmin(loss))
    return float(m1[i // loss.shape[1]]), float(m2[i % loss.shape[1]])


def landscapes(
    toy: Toy,
    m1: Tensor,
    m2: Tensor,
    tau: Callable[[Tensor], Tensor],
    margin: float = 1.0,
    distance: str = "class_means",
) -> dict[str, Tensor]:
    """Loss over the grid m1 x m2 ([len(m1), len(m2)]): ``diffusion`` alone and ``diffusion + <phi>`` per form."""
    g1, g2 = torch.meshgrid(m1.double(), m2.double(), indexing="ij")
    diff = diffusion_loss(toy, g1, g2)
    out = {"diffusion": diff}
    for phi in PHI:
        out[phi] = diff + pcl_loss(toy, g1, g2, phi, tau, margin, distance)
    return out
