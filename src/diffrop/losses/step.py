"""The training step contract: what one training step hands every loss term (``Step``), and what a term asks of
the step before the network runs (``StepNeeds``). A term only reads the step: it never runs the network itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

from torch import Tensor

from diffrop.diffusion.schedule import NoiseSchedule


def _identity(x: Tensor) -> Tensor:
    return x


@dataclass(frozen=True, eq=False, kw_only=True)
class Forward:
    """One more evaluation of the network a term asks the training step for: eps_hat = net(xt, t, y, cond), with
    the step's DiffAugment parameters of each row. ``eps`` is the noise that made ``xt`` where ``xt`` is a
    forward-process sample of label ``y`` at ``t`` (a valid DDPM target), else None. ``by``: the term that asked;
    it reads the output back with ``Step.forwards_by(self)``."""

    xt: Tensor
    t: Tensor
    y: Tensor
    cond: Tensor
    eps: Tensor | None
    by: LossTerm

    def evaluated(self, eps_hat: Tensor) -> ExtraForward:
        return ExtraForward(
            xt=self.xt, t=self.t, y=self.y, cond=self.cond, eps=self.eps, by=self.by, eps_hat=eps_hat
        )


@dataclass(frozen=True, eq=False, kw_only=True)
class ExtraForward(Forward):
    """A ``Forward`` with the network's output."""

    eps_hat: Tensor


def no_forwards(step: Step) -> list[Forward]:
    return []


@dataclass(frozen=True)
class StepNeeds:
    """What a loss term needs from the training step, read by the module (``DiffusionModule.forward_step``):

    - ``group_size``: samples that share one (t, eps) (``diffrop.diffusion.noising.draw_noise``; 1: per sample).
      The step uses the largest any term asks for and sets ``Step.group``.
    - ``forwards``: given the step's inputs (before the network runs: no ``eps_hat`` or ``mu`` yet), the extra
      network evaluations the term wants (their random draws, e.g. PCL's partners, happen in this call). The module
      evaluates them with the main forward, in one network call, and puts them on ``Step.extra_forwards`` before
      any term runs; each costs one more forward (and backward) of the batch.
    """

    group_size: int = 1
    forwards: Callable[[Step], list[Forward]] = no_forwards


@dataclass(kw_only=True)
class Step:
    x0: Tensor  # [B, C, H, W] clean images in [-1, 1]
    xt: Tensor  # [B, C, H, W] noised images
    t: Tensor  # [B] long, 0-based timesteps
    eps: Tensor  # [B, C, H, W] the noise that made xt
    y: Tensor  # [B] long class labels
    cond: Tensor  # [B] bool, False where the label was dropped for guidance training
    all_dropped: bool  # host-side flag: the whole batch was made unconditional (CBDM's per-batch drop)
    schedule: NoiseSchedule
    class_freq: Tensor  # [num_classes] training label frequencies (sum 1)
    # [B, C, H, W] the network's estimate of eps: set by the step's one network call, after the terms' forwards
    # were asked for (StepNeeds.forwards sees the inputs only)
    eps_hat: Tensor = None  # type: ignore[assignment]
    group: Tensor | None = (
        None  # [B] long: samples of one group share t and eps (DiffROP Eq. 12); None: per sample
    )
    group_size: int = 1  # the groups' size (consecutive samples; the last group may be shorter)
    gather: Callable[[Tensor], Tensor] = _identity  # all_gather keeping gradients under DDP
    diagnostics: dict[str, Tensor] = field(default_factory=dict)  # extra values a term wants logged
    # the extra forwards the terms asked for (StepNeeds.forwards), evaluated by the module before any term runs:
    # the loss terms' gradients reach these outputs too, and the diagnostics' grad ratios count them
    extra_forwards: list[ExtraForward] = field(default_factory=list)

    @cached_property
    def mu(self) -> Tensor:
        """Posterior means mu(x_t, t, c) of DiffROP Eq. 9, computed once if a term asks for them."""
        return self.schedule.posterior_mean(self.xt, self.t, self.eps_hat)

    @property
    def outputs(self) -> list[Tensor]:
        """Every eps_hat the network produced in this step: the main forward's, then each extra forward's."""
        return [self.eps_hat, *(f.eps_hat for f in self.extra_forwards)]

    def forwards_by(self, term: LossTerm, expected: int | None = None) -> list[ExtraForward]:
        """The extra forwards ``term`` asked for, in the order it asked; with ``expected``, an error unless there
        are that many (a step that did not evaluate the term's ``needs.forwards``)."""
        found = [f for f in self.extra_forwards if f.by is term]
        if expected is not None and len(found) != expected:
            raise ValueError(
                f"{type(term).__name__} reads its {expected} extra forward(s) from the step, found {len(found)}: "
                "the step must evaluate the term's needs.forwards (DiffusionModule.forward_step)"
            )
        return found


class LossTerm(Protocol):
    needs: (
        StepNeeds  # what the term asks of the step (noise grouping, extra forwards); StepNeeds() for nothing
    )

    def __call__(self, step: Step) -> Tensor: ...  # scalar, already weighted; reads the step only
