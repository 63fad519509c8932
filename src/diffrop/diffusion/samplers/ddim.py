"""DDIM (Song et al. 2021, Eq. 12) on evenly spaced timesteps; eta = 0 is deterministic, eta = 1 DDPM-like."""

from __future__ import annotations

import torch
from torch import Tensor

from diffrop.diffusion.samplers.loop import Chain, Sampler, check_steps
from diffrop.diffusion.schedule import NoiseSchedule


def timestep_grid(schedule: NoiseSchedule, steps: int) -> list[int]:
    """``steps`` evenly spaced integer timesteps from T - 1 down to 0 (DDIM's grid)."""
    check_steps(schedule, steps)
    return torch.linspace(0, schedule.num_steps - 1, steps).round().long().tolist()[::-1]


def update(chain: Chain, x: Tensor, eps: Tensor, t: int, s: int, state: None) -> tuple[Tensor, None]:
    """Eq. 12 with x0 clipped to [-1, 1] and eps made consistent with the clipped x0; s = -1 is abar = 1."""
    eta = float(chain.eta)
    abar_t = chain.schedule.alpha_bars[t]
    abar_s = chain.schedule.alpha_bars[s] if s >= 0 else torch.ones_like(abar_t)
    x0 = ((x - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()).clamp(-1, 1)
    eps = (x - abar_t.sqrt() * x0) / (1 - abar_t).sqrt()  # consistent with the clipped x0
    sigma = eta * ((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)).sqrt()
    x = abar_s.sqrt() * x0 + (1 - abar_s - sigma**2).clamp_min(0).sqrt() * eps
    if eta > 0 and s >= 0:
        x = x + sigma * chain.noise()
    return x, None


def check_eta(eta: float | None) -> None:
    if eta is None or eta < 0:
        raise ValueError(f"sampler.eta must be >= 0 for DDIM, got {eta}")


SAMPLER = Sampler("ddim", timestep_grid, update, check_eta)
