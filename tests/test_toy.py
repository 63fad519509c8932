"""The Fig. 2 toy (diffrop.paper.toy): closed forms against Monte Carlo, quadrature against closed forms, the arg-mins."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from diffrop.losses.pcl import PHI
from diffrop.losses.tau import Constant, ExpDecay
from diffrop.paper.toy import Toy, argmin_2d, diffusion_loss, gaussian_expectation, landscapes, pcl_loss
from tests.helpers.config_objects import linear_schedule
from tests.helpers.train_utils import REPO, load_script

STEP = 0.02
M1 = torch.arange(-0.3, 0.3 + 1e-9, STEP, dtype=torch.float64)
M2 = torch.arange(1.0, 3.4 + 1e-9, STEP, dtype=torch.float64)


def _simulate(toy: Toy, m: tuple[float, float], n: int, seed: int = 0):
    """Draw (class, t, x0, eps) from the toy's data and run the Gaussian denoiser through the package's schedule."""
    g = torch.Generator().manual_seed(seed)
    sched = linear_schedule(toy.num_steps).double()
    y = (torch.rand(n, generator=g, dtype=torch.float64) < toy.weights[1]).long()
    t = toy.timesteps()[torch.randint(toy.num_t, (n,), generator=g)]
    a, mm = torch.tensor(toy.means, dtype=torch.float64)[y], torch.tensor(m, dtype=torch.float64)[y]
    x0 = a + toy.s * torch.randn(n, generator=g, dtype=torch.float64)
    eps = torch.randn(n, generator=g, dtype=torch.float64)
    xt = sched.q_sample(x0, t, eps)
    abar = sched.alpha_bars[t]
    # Bayes denoiser for x0 ~ N(mm, s^2): E[eps | x_t] = sqrt(1-abar) (x_t - sqrt(abar) mm) / Var(x_t)
    eps_hat = (1 - abar).sqrt() * (xt - abar.sqrt() * mm) / (abar * toy.s**2 + 1 - abar)
    return y, t, eps, eps_hat, sched.posterior_mean(xt, t, eps_hat)


def test_diffusion_loss_matches_monte_carlo() -> None:
    toy = Toy(num_t=4)
    m = (0.3, 1.4)
    _, _, eps, eps_hat, _ = _simulate(toy, m, 400_000)
    mc = (eps - eps_hat).square().mean()
    exact = diffusion_loss(toy, torch.tensor(m[0]), torch.tensor(m[1]))
    assert exact.item() == pytest.approx(mc.item(), rel=0.01)


def test_gaussian_expectation_matches_closed_forms() -> None:
    mean = torch.tensor([-2.0, -1.0, -0.3, 0.0, 0.5], dtype=torch.float64)
    var = torch.tensor([0.5, 1.0, 2.0, 0.25, 1.5], dtype=torch.float64)
    # E exp(-D^2) for D ~ N(m, v) = exp(-m^2 / (1 + 2v)) / sqrt(1 + 2v)
    got = gaussian_expectation(lambda x: torch.exp(-(x**2)), mean, var)
    assert torch.allclose(got, torch.exp(-(mean**2) / (1 + 2 * var)) / (1 + 2 * var).sqrt(), atol=1e-9)
    # E max(0, M - D^2) = int_{|x| < sqrt(M)} (M - x^2) N(x; m, v) dx, by normal CDF/pdf moments
    margin = 1.0
    cdf = lambda z: 0.5 * (1 + torch.erf(z / math.sqrt(2)))  # noqa: E731
    pdf = lambda z: torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)  # noqa: E731
    sd = var.sqrt()
    lo, hi = (-math.sqrt(margin) - mean) / sd, (math.sqrt(margin) - mean) / sd
    p = cdf(hi) - cdf(lo)
    ez = pdf(lo) - pdf(hi)
    ez2 = p + lo * pdf(lo) - hi * pdf(hi)
    hinge = margin * p - (mean**2 * p + 2 * mean * sd * ez + var * ez2)
    got = gaussian_expectation(lambda x: (margin - x**2).clamp_min(0), mean, var)
    assert torch.allclose(got, hinge, atol=1e-5)


@pytest.mark.parametrize("phi", list(PHI))
def test_pcl_pairs_matches_monte_carlo(phi: str) -> None:
    """The pairs distance is the population value of the sample-pair PCL: check it by sampling pairs."""
    toy, tau = Toy(num_t=3), ExpDecay(tau0=2.0, temperature=0.5)
    m = (0.2, 1.7)
    n = 300_000
    y, t, _, _, mu = _simulate(toy, m, 2 * n, seed=1)
    mu0, t0 = mu[y == 0][:n], t[y == 0][:n]
    mu1 = mu[y == 1]
    mu1 = mu1[torch.randint(len(mu1), (len(mu0),), generator=torch.Generator().manual_seed(2))]
    mc = 2 * 0.95 * 0.05 * (tau(t0.double() / toy.num_steps) * PHI[phi]((mu0 - mu1) ** 2, 1.0)).mean()
    exact = pcl_loss(toy, torch.tensor(m[0]), torch.tensor(m[1]), phi, tau, 1.0, "pairs")
    assert exact.item() == pytest.approx(mc.item(), rel=0.02, abs=1e-4)


def test_pcl_class_means_matches_monte_carlo_means() -> None:
    toy, tau = Toy(num_t=3), Constant(1.0)
    m = (0.2, 1.7)
    y, t, _, _, mu = _simulate(toy, m, 600_000, seed=3)
    expected = 0.0
    for tk in toy.timesteps():
        d = (mu[(y == 0) & (t == tk)].mean() - mu[(y == 1) & (t == tk)].mean()) ** 2
        expected += 2 * 0.95 * 0.05 * PHI["recip"](d, 1.0) / toy.num_t
    exact = pcl_loss(toy, torch.tensor(m[0]), torch.tensor(m[1]), "recip", tau, 1.0, "class_means")
    assert exact.item() == pytest.approx(expected.item(), rel=2e-3)


@pytest.mark.parametrize("distance", ["class_means", "pairs"])
def test_diffusion_alone_and_zero_tau_are_optimal_at_the_truth(distance: str) -> None:
    losses = landscapes(Toy(num_t=4), M1, M2, Constant(0.0), 1.0, distance)
    for name, loss in losses.items():
        a1, a2 = argmin_2d(loss, M1, M2)
        assert abs(a1 - 0.0) <= STEP / 2 and abs(a2 - 2.0) <= STEP / 2, name


def test_neg_l2_moves_the_optimum_and_hinge_like_forms_much_less() -> None:
    losses = landscapes(Toy(), M1, M2, Constant(30.0), 1.0, "class_means")
    shift = {k: math.dist(argmin_2d(v, M1, M2), (0.0, 2.0)) for k, v in losses.items()}
    assert shift["neg_l2"] > 0.4
    for phi in ("hinge", "recip", "exp"):
        assert shift[phi] < shift["neg_l2"] / 3, phi


def test_inactive_hinge_keeps_the_truth_exactly() -> None:
    """A margin below every class-mean distance at the truth makes the hinge zero near (0, 2): no shift at all."""
    toy = Toy()
    c = toy.coefficients()
    d_true = ((c["C"] + c["B"]) * 2.0) ** 2  # posterior means of the true model are (C + B) a_c
    margin = 0.5 * d_true.min().item()
    losses = landscapes(toy, M1, M2, Constant(1000.0), margin, "class_means")
    assert argmin_2d(losses["hinge"], M1, M2) == pytest.approx((0.0, 2.0), abs=1e-9)
    assert torch.equal(losses["hinge"], losses["diffusion"])  # zero everywhere on this grid


def test_bad_toy_inputs_raise() -> None:
    with pytest.raises(ValueError, match="s"):
        Toy(s=0.0)
    with pytest.raises(ValueError, match="weights"):
        Toy(weights=(0.5, 0.6))
    with pytest.raises(ValueError, match="phi"):
        pcl_loss(Toy(), torch.tensor(0.0), torch.tensor(2.0), "l1", Constant(1.0))


def test_script_writes_png_and_json(tmp_path: Path) -> None:
    fig2_toy = load_script(REPO / "experiments" / "fig2_toy.py", "fig2_toy")
    result = fig2_toy.main(["--out", str(tmp_path), "--step", "0.05", "--num-t", "4"])
    assert (tmp_path / "fig2_toy.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "fig2_toy.json").read_text())
    assert saved["landscapes"] == result["landscapes"]
    assert set(saved["landscapes"]) == {"diffusion", *PHI}
    assert saved["landscapes"]["diffusion"]["argmin"] == pytest.approx([0.0, 2.0], abs=1e-9)
