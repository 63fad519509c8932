"""experiments/pairing_distances.py: the Bayes-optimal posterior mean and the distances it reports."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.config_objects import linear_schedule
from tests.helpers.train_utils import REPO, load_script

script = load_script(REPO / "experiments" / "pairing_distances.py", "pairing_distances")


def test_one_image_per_class_gives_the_exact_eq12_distance(monkeypatch) -> None:
    # With one training image per class, E[x_0 | x_t, c] is that image, so under a shared eps
    # mu_i - mu_j = sqrt(abar_{t-1}) (x_0^i - x_0^j) and d = abar_{t-1} |x_0^i - x_0^j|^2 / D, whatever the noise.
    images = torch.tensor([[1.0, -1.0, 0.5], [-0.5, 0.0, 1.0]])
    labels = torch.tensor([0, 1])
    abar_prev = float(linear_schedule().alpha_bars_prev[300])
    got = script.distances(images, labels, 300, shared_eps=True, same=False, n=50, seed=0)
    assert got["mean"] == pytest.approx(abar_prev * (1.5**2 + 1 + 0.5**2) / 3, rel=1e-6)  # float32 schedule
    # with its own eps per image the noise does not cancel: d is larger than the content term alone
    noisy = script.distances(images, labels, 300, shared_eps=False, same=False, n=50, seed=0)
    assert noisy["mean"] > 2 * got["mean"]


def test_bayes_mu_is_eq9_with_the_true_noise_for_a_single_image() -> None:
    sched, t = linear_schedule(), 500
    x0 = torch.tensor([[0.3, -0.7]], dtype=torch.float64)
    eps = torch.tensor([[1.2, 0.4]], dtype=torch.float64)
    abar = sched.alpha_bars[t].double()
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    mu = script.bayes_mu(xt, t, torch.tensor([0]), x0, torch.tensor([0]), sched)
    eq9 = sched.posterior_mean(xt.float(), torch.tensor([t]), eps.float()).double()
    assert torch.allclose(mu, eq9, atol=1e-5)
