"""The DDPM eps-prediction loss (Ho et al. 2020), optionally re-weighted by class frequency (paper Table 4)."""

from __future__ import annotations

import torch
from torch import Tensor

from diffrop.losses.step import Step, StepNeeds


class EpsMSE:
    """Mean squared error between eps and eps_hat over all elements.

    ``reweight=True`` weights sample i by 1 / (C * p_{y_i}), the inverse class frequency normalised so that its
    expectation under the training distribution is 1 (the "+Reweighting" baseline of Table 4).
    """

    needs = StepNeeds()  # the main forward only

    def __init__(self, weight: float, reweight: bool) -> None:
        self.weight = weight
        self.reweight = reweight

    def __call__(self, step: Step) -> Tensor:
        per_sample = (step.eps_hat - step.eps).square().flatten(1).mean(1)  # [B]
        if self.reweight:
            freq = step.class_freq
            per_sample = per_sample / (freq.numel() * freq[step.y])
        return self.weight * per_sample.mean()


class PartnerEpsMSE:
    """The eps-MSE on the extra forwards whose input is a forward-process sample of its own label (PCL
    ``pairing=partner``: x_0^j noised with the anchor's t_i and eps_i and denoised under y_j is a DDPM sample with
    target eps_i), so the second forward PCL pays for also trains the denoiser. With the main ``ddpm`` term at
    the same weight the two are one DDPM loss over twice the batch (weights 0.5 + 0.5: its mean). Asks for no
    forward of its own: it reads the ones another term asked for (``configs/loss/feed_pcl_exp.yaml``)."""

    needs = StepNeeds()

    def __init__(self, weight: float) -> None:
        self.weight = weight

    def __call__(self, step: Step) -> Tensor:
        forwards = [f for f in step.extra_forwards if f.eps is not None]
        if not forwards:
            raise ValueError(
                "loss.terms.ddpm_partner needs another term whose extra forward is a DDPM sample "
                "(loss.terms.pcl.pairing=partner)"
            )
        per = [(f.eps_hat - f.eps).square().mean() for f in forwards]
        return self.weight * torch.stack(per).mean()
