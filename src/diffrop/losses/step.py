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


@dataclass(frozen=True)
class ExtraForward:
    """One more evaluation of the network in a training step: eps_hat = net(xt, t, y). ``eps`` is the noise that
    made ``xt`` where ``xt`` is a forward-process sample at ``t`` (a valid DDPM target), else None."""

    xt: Tensor
    t: Tensor
    y: Tensor
    eps_hat: Tensor
    eps: Tensor | None


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
    # every extra network evaluation a term ran (PCL partner / same_xt, CBDM), appended by that term: the loss
    # terms' gradients reach these outputs too, and the diagnostics' grad ratios count them
    extra_forwards: list[ExtraForward] = field(default_factory=list)

    @cached_property
    def mu(self) -> Tensor:
        """Posterior means mu(x_t, t, c) of DiffROP Eq. 9, computed once if a term asks for them."""
        return self.schedule.posterior_mean(self.xt, self.t, self.eps_hat)

    @property
    def outputs(self) -> list[Tensor]:
        """Every eps_hat the network produced in this step: the main forward's, then each extra forward's."""
        return [self.eps_hat, *(f.eps_hat for f in self.extra_forwards)]


class LossTerm(Protocol):
    def __call__(self, step: Step) -> Tensor: ...  # scalar, already weighted
