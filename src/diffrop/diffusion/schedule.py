"""The DDPM forward process (Ho et al. 2020) and the posterior mean of DiffROP Eq. 9."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class NoiseSchedule(nn.Module):
    """Linear betas over ``num_steps`` steps; buffers move with the module to the training device.

    Everything indexes by integer timesteps ``t`` in ``[0, num_steps)`` (0-based, as the CBDM code does).
    """

    def __init__(self, num_steps: int, beta_start: float, beta_end: float) -> None:
        super().__init__()
        if not 0 < beta_start < beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {beta_start=} {beta_end=}")
        betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
        alphas = 1.0 - betas
        alpha_bars = torch.cumprod(alphas, dim=0)
        self.num_steps = num_steps
        alpha_bars_prev = torch.cat([alpha_bars.new_ones(1), alpha_bars[:-1]])  # abar_{t-1}, abar_{-1} = 1
        buffers = {
            "betas": betas,
            "alphas": alphas,
            "alpha_bars": alpha_bars,
            "alpha_bars_prev": alpha_bars_prev,
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.float(), persistent=False)

    @staticmethod
    def _at(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """values[t] reshaped to broadcast against ``like`` ([B] -> [B, 1, 1, 1])."""
        return values[t].reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)

    def q_sample(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
        abar = self._at(self.alpha_bars, t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * eps

    def posterior_mean(self, xt: Tensor, t: Tensor, eps_hat: Tensor) -> Tensor:
        """mu(x_t, t) = (x_t - (1 - alpha_t) / sqrt(1 - abar_t) * eps_hat) / sqrt(alpha_t)  (DiffROP Eq. 9)."""
        alpha = self._at(self.alphas, t, xt)
        abar = self._at(self.alpha_bars, t, xt)
        return (xt - (1 - alpha) / (1 - abar).sqrt() * eps_hat) / alpha.sqrt()

    def predict_x0(self, xt: Tensor, t: Tensor, eps_hat: Tensor) -> Tensor:
        """Invert q_sample for x0 given a noise estimate."""
        abar = self._at(self.alpha_bars, t, xt)
        return (xt - (1 - abar).sqrt() * eps_hat) / abar.sqrt()
