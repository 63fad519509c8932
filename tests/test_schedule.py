"""The DDPM forward process against hand values and the closed-form posterior q(x_{t-1} | x_t, x_0) (Ho et al. Eq. 7)."""

from __future__ import annotations

import math

import pytest
import torch

from diffrop.diffusion.schedule import NoiseSchedule
from tests.helpers.config_objects import linear_schedule

T = 1000


def hand_betas(num_steps: int = T, start: float = 1e-4, end: float = 0.02) -> list[float]:
    """beta_t = start + t * (end - start) / (T - 1), t = 0 .. T-1, in Python floats."""
    return [start + t * (end - start) / (num_steps - 1) for t in range(num_steps)]


def hand_alpha_bars(num_steps: int = T) -> list[float]:
    out, prod = [], 1.0
    for beta in hand_betas(num_steps):
        prod *= 1.0 - beta
        out.append(prod)
    return out


def test_betas_and_alpha_bars_by_hand():
    s = NoiseSchedule(T, 1e-4, 0.02)
    assert s.num_steps == T and s.betas.shape == (T,)
    assert s.betas[0].item() == pytest.approx(1e-4, rel=1e-6)
    assert s.betas[1].item() == pytest.approx(1e-4 + 0.0199 / 999, rel=1e-6)
    assert s.betas[-1].item() == pytest.approx(0.02, rel=1e-6)
    assert s.alpha_bars[0].item() == pytest.approx(1 - 1e-4, rel=1e-7)
    assert s.alpha_bars[1].item() == pytest.approx((1 - 1e-4) * (1 - (1e-4 + 0.0199 / 999)), rel=1e-7)
    torch.testing.assert_close(s.alphas, 1 - s.betas)
    ref = torch.tensor(hand_alpha_bars(), dtype=torch.float32)
    torch.testing.assert_close(s.alpha_bars, ref, rtol=1e-5, atol=1e-9)
    # Known value of the DDPM schedule: abar_T is about 4.0e-5 (almost pure noise at t = T - 1).
    assert 3.9e-5 < s.alpha_bars[-1].item() < 4.1e-5


@pytest.mark.parametrize(("start", "end"), [(0.0, 0.02), (0.02, 1e-4), (1e-4, 1.0), (0.01, 0.01)])
def test_bad_betas_are_rejected(start, end):
    with pytest.raises(ValueError, match="beta_start"):
        NoiseSchedule(10, start, end)


def _true_posterior_mean(x0, xt, t: torch.Tensor) -> torch.Tensor:
    """Ho et al. Eq. 7: mu~ = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t,
    with abar_{-1} = 1, in float64 from the hand schedule."""
    betas, abars = hand_betas(), hand_alpha_bars()
    c0, ct = [], []
    for ti in t.tolist():
        abar_prev = abars[ti - 1] if ti > 0 else 1.0
        c0.append(math.sqrt(abar_prev) * betas[ti] / (1 - abars[ti]))
        ct.append(math.sqrt(1 - betas[ti]) * (1 - abar_prev) / (1 - abars[ti]))
    c0 = torch.tensor(c0, dtype=torch.float64)[:, None, None, None]
    ct = torch.tensor(ct, dtype=torch.float64)[:, None, None, None]
    return c0 * x0.double() + ct * xt.double()


def test_mu_from_true_eps_is_the_true_posterior_mean():
    s = linear_schedule()
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0, 1, 2, 10, 100, 500, 900, 999])
    x0 = torch.rand(len(t), 3, 4, 4, generator=g) * 2 - 1
    eps = torch.randn(x0.shape, generator=g)
    xt = s.q_sample(x0, t, eps)
    mu = s.posterior_mean(xt, t, eps)
    expected = _true_posterior_mean(x0, xt, t)
    torch.testing.assert_close(mu.double(), expected, rtol=1e-4, atol=2e-4)
    torch.testing.assert_close(mu[0], x0[0], rtol=0, atol=1e-4)  # at t = 0 the posterior mean is x0 itself


def test_predict_x0_inverts_q_sample():
    s = linear_schedule()
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([0, 250, 750])
    x0 = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(x0.shape, generator=g)
    # Tolerance grows with t: dividing by sqrt(abar_t) amplifies float32 rounding.
    torch.testing.assert_close(s.predict_x0(s.q_sample(x0, t, eps), t, eps), x0, rtol=0, atol=1e-3)


def test_q_sample_by_hand_with_per_sample_t():
    s = linear_schedule()
    abars = hand_alpha_bars()
    t = torch.tensor([0, 499, 999])
    x0 = torch.full((3, 1, 2, 2), 0.5)
    eps = torch.full((3, 1, 2, 2), -1.0)
    xt = s.q_sample(x0, t, eps)
    for i, ti in enumerate(t.tolist()):
        expected = math.sqrt(abars[ti]) * 0.5 - math.sqrt(1 - abars[ti])
        torch.testing.assert_close(xt[i], torch.full((1, 2, 2), expected), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("t", [0, 100, 600, 999])
def test_q_sample_moments(t):
    """x_t | x_0 ~ N(sqrt(abar_t) x0, (1 - abar_t) I): check mean and variance over 200,000 draws."""
    s = linear_schedule()
    abar = hand_alpha_bars()[t]
    n = 200_000
    x0 = torch.full((n, 1), 0.8)
    eps = torch.randn(n, 1, generator=torch.Generator().manual_seed(t))
    xt = s.q_sample(x0, torch.full((n,), t), eps)
    sd = math.sqrt(1 - abar)
    # 6-sigma bounds for the sample mean and variance.
    assert abs(xt.mean().item() - math.sqrt(abar) * 0.8) < 6 * sd / math.sqrt(n) + 1e-6
    assert abs(xt.var().item() - (1 - abar)) < 6 * (1 - abar) * math.sqrt(2 / n) + 1e-6


def test_buffers_follow_dtype_of_input():
    s = NoiseSchedule(10, 1e-4, 0.02)
    x0 = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    assert s.q_sample(x0, torch.tensor([0, 9]), torch.ones_like(x0)).dtype == torch.float64
