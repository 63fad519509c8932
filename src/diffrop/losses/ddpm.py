"""The DDPM eps-prediction loss (Ho et al. 2020), optionally re-weighted by class frequency (paper Table 4)."""

from __future__ import annotations

from torch import Tensor

from diffrop.losses.step import Step


class EpsMSE:
    """Mean squared error between eps and eps_hat over all elements.

    ``reweight=True`` weights sample i by 1 / (C * p_{y_i}), the inverse class frequency normalised so that its
    expectation under the training distribution is 1 (the "+Reweighting" baseline of Table 4).
    """

    def __init__(self, weight: float, reweight: bool) -> None:
        self.weight = weight
        self.reweight = reweight

    def __call__(self, step: Step) -> Tensor:
        per_sample = (step.eps_hat - step.eps).square().flatten(1).mean(1)  # [B]
        if self.reweight:
            freq = step.class_freq
            per_sample = per_sample / (freq.numel() * freq[step.y])
        return self.weight * per_sample.mean()
