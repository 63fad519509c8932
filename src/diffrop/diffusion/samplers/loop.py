"""The loop every sampler shares: initial noise, classifier-free guidance, one network evaluation per timestep of
the sampler's grid, and the sampler's update rule between them. A sampler (``Sampler``) is only its time grid and
its update rule.

Guidance (CBDM / DiffROP convention): eps = (1 + w) eps(x, c) - w eps(x, none), the conditional and unconditional
halves evaluated in ONE batched forward of size 2B.

Randomness: every draw goes through ``generator``, either a ``torch.Generator`` (one stream for the batch) or a
``StackedGenerator`` (one stream per sample, EDM's habit): with per-sample seeds, sample k's initial noise and
every later noise draw depend on seed k only, so a generated set does not depend on the batch size, the shard
layout or the number of GPUs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from diffrop.diffusion.denoiser import Denoiser
from diffrop.diffusion.schedule import NoiseSchedule


class StackedGenerator:
    """One ``torch.Generator`` per sample (EDM's ``StackedRandomGenerator``): row i of every draw comes from seed i.

    Costs one small ``randn`` per sample and draw; next to a network forward per step this is negligible.
    """

    def __init__(self, seeds: Sequence[int] | Tensor, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(int(s)) for s in seeds]

    def randn(self, shape: Sequence[int]) -> Tensor:
        if shape[0] != len(self.generators):
            raise ValueError(
                f"asked for {shape[0]} samples of noise but this generator has {len(self.generators)} seeds"
            )
        return torch.stack(
            [torch.randn(tuple(shape[1:]), generator=g, device=self.device) for g in self.generators]
        )


Generator = torch.Generator | StackedGenerator


def randn(shape: tuple[int, ...], generator: Generator | None, device: torch.device) -> Tensor:
    if isinstance(generator, StackedGenerator):
        return generator.randn(shape).to(device)
    return torch.randn(shape, generator=generator, device=device)


def guided_eps(net: Denoiser, x: Tensor, t: Tensor, y: Tensor, guidance: float) -> Tensor:
    cond = torch.ones_like(y, dtype=torch.bool)
    if guidance == 0:
        return net(x, t, y, cond)
    both = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, y]), torch.cat([cond, ~cond]))
    eps_c, eps_u = both.chunk(2)
    return (1 + guidance) * eps_c - guidance * eps_u


def check_steps(schedule: NoiseSchedule, steps: int) -> None:
    if not 1 <= steps <= schedule.num_steps:
        raise ValueError(f"sampler.steps must be in [1, {schedule.num_steps}], got {steps}")


@dataclass(frozen=True)
class Chain:
    """What stays fixed along one chain, for the update rule: the schedule, eta (``None`` where the sampler has
    none) and ``noise()``, a fresh draw of the chain's noise (x's shape) from its generator."""

    schedule: NoiseSchedule
    eta: float | None
    noise: Callable[[], Tensor]


# update(chain, x, eps, t, s, state) -> (x, state): one step from timestep t to s (s = -1: to the data, the last
# step), eps the guided prediction at (x, t); ``state`` is what the rule carries between steps (None at first).
Update = Callable[[Chain, Tensor, Tensor, int, int, Any], tuple[Tensor, Any]]


@dataclass(frozen=True)
class Sampler:
    """A sampler: ``grid(schedule, steps)`` the timesteps T - 1 > ... > 0 at which the network is evaluated (one
    (guided) forward each), ``update`` the rule between them, ``check_eta`` (optional) what eta it accepts
    (raises ValueError). ``diffrop.diffusion.samplers`` registers one per module of the package."""

    name: str
    grid: Callable[[NoiseSchedule, int], list[int]]
    update: Update
    check_eta: Callable[[float | None], None] | None = None


@torch.no_grad()
def run(
    sampler: Sampler,
    net: Denoiser,
    schedule: NoiseSchedule,
    y: Tensor,
    shape: tuple[int, ...],
    steps: int,
    eta: float | None = None,
    guidance: float = 0.0,
    generator: Generator | None = None,
    progress: Callable | None = None,
) -> Tensor:
    """Draw ``shape`` images for labels ``y`` with ``sampler``: float images clamped to [-1, 1]."""
    grid = sampler.grid(schedule, steps)
    chain = Chain(schedule, eta, lambda: randn(shape, generator, y.device))
    x, state = chain.noise(), None
    pairs = list(zip(grid, [*grid[1:], -1], strict=True))
    for t, s in progress(pairs) if progress else pairs:
        t_batch = torch.full((shape[0],), t, device=y.device, dtype=torch.long)
        eps = guided_eps(net, x, t_batch, y, guidance)
        x, state = sampler.update(chain, x, eps, t, s, state)
    return x.clamp(-1, 1)
