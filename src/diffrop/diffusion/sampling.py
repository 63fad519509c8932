"""Samplers as pure functions over ``net(x, t, y, cond)``: ancestral DDPM and DDIM, with classifier-free guidance.

Guidance (CBDM / DiffROP convention): eps = (1 + w) eps(x, c) - w eps(x, none), the conditional and unconditional
halves evaluated in ONE batched forward of size 2B.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from diffrop.diffusion.schedule import NoiseSchedule

Net = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def guided_eps(net: Net, x: Tensor, t: Tensor, y: Tensor, guidance: float) -> Tensor:
    cond = torch.ones_like(y, dtype=torch.bool)
    if guidance == 0:
        return net(x, t, y, cond)
    both = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, y]), torch.cat([cond, ~cond]))
    eps_c, eps_u = both.chunk(2)
    return (1 + guidance) * eps_c - guidance * eps_u


@torch.no_grad()
def ddpm_sample(
    net: Net,
    schedule: NoiseSchedule,
    y: Tensor,
    shape: tuple[int, ...],
    guidance: float = 0.0,
    generator: torch.Generator | None = None,
    progress: Callable | None = None,
) -> Tensor:
    """Ancestral sampling over all T steps with variance beta_t ("fixedlarge", as CBDM)."""
    x = torch.randn(shape, generator=generator, device=y.device)
    steps = range(schedule.num_steps - 1, -1, -1)
    for i in progress(steps) if progress else steps:
        t = torch.full((shape[0],), i, device=y.device, dtype=torch.long)
        mean = schedule.posterior_mean(x, t, guided_eps(net, x, t, y, guidance))
        if i > 0:
            noise = torch.randn(shape, generator=generator, device=y.device)
            x = mean + schedule.betas[i].sqrt() * noise
        else:
            x = mean
    return x.clamp(-1, 1)


@torch.no_grad()
def ddim_sample(
    net: Net,
    schedule: NoiseSchedule,
    y: Tensor,
    shape: tuple[int, ...],
    steps: int = 100,
    eta: float = 0.0,
    guidance: float = 0.0,
    generator: torch.Generator | None = None,
    progress: Callable | None = None,
) -> Tensor:
    """DDIM (Song et al. 2021, Eq. 12) on ``steps`` evenly spaced timesteps; eta = 1 recovers DDPM-like noise."""
    if not 1 <= steps <= schedule.num_steps:
        raise ValueError(f"sampler.steps must be in [1, {schedule.num_steps}], got {steps}")
    ts = torch.linspace(0, schedule.num_steps - 1, steps).round().long().tolist()[::-1]
    x = torch.randn(shape, generator=generator, device=y.device)
    pairs = list(zip(ts, [*ts[1:], -1], strict=True))
    for i, j in progress(pairs) if progress else pairs:
        t = torch.full((shape[0],), i, device=y.device, dtype=torch.long)
        eps = guided_eps(net, x, t, y, guidance)
        abar_t = schedule.alpha_bars[i]
        abar_s = schedule.alpha_bars[j] if j >= 0 else torch.ones_like(abar_t)
        x0 = ((x - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()).clamp(-1, 1)
        eps = (x - abar_t.sqrt() * x0) / (1 - abar_t).sqrt()  # consistent with the clipped x0
        sigma = eta * ((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)).sqrt()
        x = abar_s.sqrt() * x0 + (1 - abar_s - sigma**2).clamp_min(0).sqrt() * eps
        if eta > 0 and j >= 0:
            x = x + sigma * torch.randn(shape, generator=generator, device=y.device)
    return x.clamp(-1, 1)


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] float -> [0, 255] uint8."""
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
