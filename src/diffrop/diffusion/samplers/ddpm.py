"""Ancestral DDPM (Ho et al. 2020) over all T steps with variance beta_t ("fixedlarge", as CBDM samples)."""

from __future__ import annotations

import torch
from torch import Tensor

from diffrop.diffusion.samplers.loop import Chain, Sampler
from diffrop.diffusion.schedule import NoiseSchedule


def grid(schedule: NoiseSchedule, steps: int) -> list[int]:
    """Every timestep T - 1, ..., 0: the chain the model was trained on."""
    if steps != schedule.num_steps:
        raise ValueError(
            f"sampler=ddpm walks all T={schedule.num_steps} steps (got sampler.steps={steps}); "
            "use sampler=ddim for fewer steps"
        )
    return list(range(schedule.num_steps - 1, -1, -1))


def update(chain: Chain, x: Tensor, eps: Tensor, t: int, s: int, state: None) -> tuple[Tensor, None]:
    """x_{t-1} = mu(x_t, t) + sqrt(beta_t) z (DiffROP Eq. 9 for mu), no noise on the last step."""
    t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    mean = chain.schedule.posterior_mean(x, t_batch, eps)
    if s < 0:
        return mean, None
    return mean + chain.schedule.betas[t].sqrt() * chain.noise(), None


SAMPLER = Sampler("ddpm", grid, update)
