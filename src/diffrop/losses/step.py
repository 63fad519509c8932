"""What one training forward pass produced, shared by every loss term (no term recomputes it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

from torch import Tensor

from diffrop.diffusion.denoiser import Denoiser
from diffrop.diffusion.schedule import NoiseSchedule


def _identity(x: Tensor) -> Tensor:
    return x


@dataclass(kw_only=True)
class Step:
    x0: Tensor  # [B, C, H, W] clean images in [-1, 1]
    xt: Tensor  # [B, C, H, W] noised images
    t: Tensor  # [B] long, 0-based timesteps
    eps: Tensor  # [B, C, H, W] the noise that made xt
    eps_hat: Tensor  # [B, C, H, W] the network's estimate of eps
    y: Tensor  # [B] long class labels
    cond: Tensor  # [B] bool, False where the label was dropped for guidance training
    all_dropped: bool  # host-side flag: the whole batch was made unconditional (CBDM's per-batch drop)
    schedule: NoiseSchedule
    class_freq: Tensor  # [num_classes] training label frequencies (sum 1)
    net: Denoiser
    group: Tensor | None = (
        None  # [B] long: samples of one group share t and eps (DiffROP Eq. 12); None: per sample
    )
    gather: Callable[[Tensor], Tensor] = _identity  # all_gather keeping gradients under DDP
    diagnostics: dict[str, Tensor] = field(default_factory=dict)  # extra values a term wants logged

    @cached_property
    def mu(self) -> Tensor:
        """Posterior means mu(x_t, t, c) of DiffROP Eq. 9, computed once if a term asks for them."""
        return self.schedule.posterior_mean(self.xt, self.t, self.eps_hat)


class LossTerm(Protocol):
    def __call__(self, step: Step) -> Tensor: ...  # scalar, already weighted
