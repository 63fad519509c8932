"""A test-only loss term that turns NaN from a given training step on (tests/test_robustness.py).

Pass it with ``+loss.terms.bad._target_=tests.helpers.nan_term.NaNFrom +loss.terms.bad.step=3``; a subprocess needs
``train_utils.child_env()`` to import it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffrop.losses.step import Step, StepNeeds


class NaNFrom:
    """0 * eps_hat.mean() for the first ``step`` calls, then NaN * eps_hat.mean() (so the gradients are NaN too)."""

    needs = StepNeeds()

    def __init__(self, step: int = 0) -> None:
        self.step, self.calls = step, 0

    def __call__(self, step: Step) -> Tensor:
        scale = 0.0 if self.calls < self.step else float("nan")
        self.calls += 1
        return step.eps_hat.float().mean() * torch.tensor(scale, device=step.eps_hat.device)
