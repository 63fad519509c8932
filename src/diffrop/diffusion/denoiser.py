"""The one interface between the network and everything that calls it (training losses, samplers, evaluation)."""

from __future__ import annotations

from typing import Protocol

from torch import Tensor


class Denoiser(Protocol):
    """eps_theta(x_t, t, y, cond): the noise estimate; ``cond[i] = False`` drops sample i's label (classifier-free
    guidance). ``diffrop.nets.unet.ClassConditionalUNet`` is one; so is its EMA copy and a compiled wrapper."""

    def __call__(self, x: Tensor, t: Tensor, y: Tensor, cond: Tensor) -> Tensor: ...
