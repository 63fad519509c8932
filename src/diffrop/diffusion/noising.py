"""How a training step draws its timesteps t and noise eps: per sample, or shared within groups (DiffROP Eq. 12).

Eq. 12 compares the denoisers of two images of different classes noised at the *same* t with the *same* eps, so
x_t^i - x_t^j = sqrt(abar_t) (x_0^i - x_0^j): the noise cancels and the distance between their posterior means
measures image content. Drawing (t, eps) once per group of ``group_size`` consecutive samples gives every pair
inside a group that property from the one forward pass the DDPM loss already makes.
"""

from __future__ import annotations

import torch
from torch import Tensor


def draw_noise(x0: Tensor, num_steps: int, group_size: int = 1) -> tuple[Tensor, Tensor, Tensor | None]:
    """(t [B] long, eps like x0, group [B] long or None).

    ``group_size`` 1: t uniform and eps standard normal per sample, as in DDPM. Larger: samples ``g * group_size``
    to ``(g + 1) * group_size - 1`` share one t and one eps. The groups' t are stratified (group g takes a
    uniform t from stratum ``strata[g]`` of ``ceil(B / group_size)`` equal strata, ``strata`` a random
    permutation), so each sample's t is still uniform on [0, num_steps) (the DDPM loss stays unbiased) and one
    batch still spans every noise level.
    """
    b, device = x0.shape[0], x0.device
    if group_size <= 1:
        return torch.randint(0, num_steps, (b,), device=device), torch.randn_like(x0), None
    num_groups = -(-b // group_size)
    group = torch.arange(b, device=device) // group_size
    strata = torch.randperm(num_groups, device=device)
    u = (strata + torch.rand(num_groups, device=device)) / num_groups
    t = (u * num_steps).long().clamp_max(num_steps - 1)
    eps = torch.randn((num_groups, *x0.shape[1:]), device=device, dtype=x0.dtype)
    return t[group], eps[group], group
