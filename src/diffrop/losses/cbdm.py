"""The CBDM regulariser (Qin et al. CVPR 2023) exactly as its code does it (docs/design.md section 2).

A second forward eps_theta(x_t, t, y') on the same x_t and t with y' drawn per sample from the training label
frequencies (uniform when fine-tuning), weighted by w = weight * t / T:
    w * mse(eps(y), sg(eps(y'))) + gamma * w * mse(sg(eps(y)), eps(y')),  gamma = 1/4 in the CBDM code.
CBDM's code calls ``weight`` "tau"; here ``tau`` means only the PCL schedule.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffrop.losses.step import Forward, Step, StepNeeds

Y_PRIME = ("train_freq", "uniform")


class CBDM:
    def __init__(self, weight: float, gamma: float, y_prime: str) -> None:
        for name, value in (("weight", weight), ("gamma", gamma)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"loss.terms.cbdm.{name} must be a finite number >= 0, got {value!r}")
        if y_prime not in Y_PRIME:
            raise ValueError(f"loss.terms.cbdm.y_prime={y_prime!r} is not one of {list(Y_PRIME)}")
        self.weight, self.gamma, self.y_prime = weight, gamma, y_prime
        self.needs = StepNeeds(forwards=self._forwards)

    def _forwards(self, step: Step) -> list[Forward]:
        """The one extra forward CBDM costs: the step's x_t and t under y' (none on an unconditional batch)."""
        if step.all_dropped:
            return []
        probs = step.class_freq if self.y_prime == "train_freq" else torch.ones_like(step.class_freq)
        y_prime = torch.multinomial(probs, step.y.numel(), replacement=True)
        return [Forward(xt=step.xt, t=step.t, y=y_prime, cond=step.cond, eps=None, by=self)]

    def __call__(self, step: Step) -> Tensor:
        if step.all_dropped:  # CBDM skips the regulariser on unconditional batches (and its extra forward)
            return step.eps_hat.new_zeros(())
        (forward,) = step.forwards_by(self, expected=1)  # its y' forward
        eps_prime = forward.eps_hat
        w = self.weight * step.t.float() / step.schedule.num_steps  # [B]
        reg = (step.eps_hat - eps_prime.detach()).square().flatten(1).mean(1)
        commit = (step.eps_hat.detach() - eps_prime).square().flatten(1).mean(1)
        per_sample = w * (reg + self.gamma * commit) * step.cond  # dropped labels take no part
        return per_sample.mean()
