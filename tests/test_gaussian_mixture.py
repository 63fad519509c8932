"""The known answers of data=gaussian_lt, each checked against an independent computation, and the MLP denoiser."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate, stats
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal, kl_divergence

from diffrop import build
from diffrop.data.datamodule import LongTailDataModule
from diffrop.data.gaussian_mixture import (
    BayesDenoiser,
    GaussianMixture,
    bhattacharyya_coefficient,
    gaussian_kl,
    plane_mixture,
)
from diffrop.nets.mlp import ClassConditionalMLP
from tests.helpers.config_objects import linear_schedule
from tests.test_configs import compose_train


def random_mixture(num_classes: int = 3, dim: int = 5, seed: int = 0) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(num_classes, dim, generator=g, dtype=torch.float64)
    a = torch.randn(num_classes, dim, dim, generator=g, dtype=torch.float64)
    covs = a @ a.transpose(1, 2) / dim + 0.1 * torch.eye(dim, dtype=torch.float64)
    weights = torch.tensor([0.6, 0.3, 0.1][:num_classes], dtype=torch.float64)
    return GaussianMixture(means, covs, weights / weights.sum())


def noised(m: GaussianMixture, c: int, abar: float) -> MultivariateNormal:
    """Class c's x_t = sqrt(abar) x0 + sqrt(1 - abar) eps as a torch distribution (written out independently)."""
    return MultivariateNormal(
        math.sqrt(abar) * m.means[c], abar * m.covs[c] + (1 - abar) * torch.eye(m.dim, dtype=torch.float64)
    )


@pytest.mark.parametrize("abar", [0.999, 0.5, 0.01])
def test_eps_star_is_minus_scaled_score_of_the_noised_class(abar):
    m = random_mixture()
    xt = torch.randn(7, m.dim, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    log_p = torch.stack([noised(m, int(c), abar).log_prob(x) for c, x in zip(y, xt, strict=True)])
    (score,) = torch.autograd.grad(log_p.sum(), xt)
    expected = -math.sqrt(1 - abar) * score
    got = m.eps_star(
        xt.detach(), torch.full((7,), abar, dtype=torch.float64), y, torch.ones(7, dtype=torch.bool)
    )
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("abar", [0.9, 0.2])
def test_unconditional_eps_star_is_the_frequency_weighted_mixture_score(abar):
    m = random_mixture()
    xt = torch.randn(6, m.dim, dtype=torch.float64, requires_grad=True)
    components = MultivariateNormal(
        math.sqrt(abar) * m.means, abar * m.covs + (1 - abar) * torch.eye(m.dim, dtype=torch.float64)
    )
    mixture = MixtureSameFamily(Categorical(probs=m.weights), components)
    (score,) = torch.autograd.grad(mixture.log_prob(xt).sum(), xt)
    got = m.eps_star(
        xt.detach(),
        torch.full((6,), abar, dtype=torch.float64),
        torch.zeros(6, dtype=torch.long),
        torch.zeros(6, dtype=torch.bool),
    )
    torch.testing.assert_close(got, -math.sqrt(1 - abar) * score, rtol=1e-9, atol=1e-9)


def test_eps_star_is_the_conditional_mean_of_the_noise():
    """E[eps | x_t]: regress eps on x_t by least squares over many draws of one class (linear, as it is Gaussian)."""
    m = random_mixture(dim=3)
    abar, n, c = 0.6, 400_000, 1
    g = torch.Generator().manual_seed(1)
    x0 = m.sample_class(c, n, g)
    eps = torch.randn(n, m.dim, generator=g, dtype=torch.float64)
    xt = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * eps
    design = torch.cat([xt, torch.ones(n, 1, dtype=torch.float64)], 1)
    coef = torch.linalg.lstsq(design, eps).solution  # eps ~ xt W + b
    probe = torch.randn(5, m.dim, dtype=torch.float64)
    regression = torch.cat([probe, torch.ones(5, 1, dtype=torch.float64)], 1) @ coef
    exact = m.eps_star(
        probe,
        torch.full((5,), abar, dtype=torch.float64),
        torch.full((5,), c),
        torch.ones(5, dtype=torch.bool),
    )
    torch.testing.assert_close(regression, exact, rtol=0, atol=0.02)


def test_log_likelihoods_match_torch_distributions():
    m = random_mixture()
    x = torch.randn(4, m.dim, dtype=torch.float64)
    for abar in (1.0, 0.3):
        expected = torch.stack([noised(m, c, abar).log_prob(x) for c in range(m.num_classes)], 1)
        torch.testing.assert_close(
            m.log_likelihoods(x, torch.full((4,), abar, dtype=torch.float64)), expected
        )


def test_bayes_classifier_error_matches_the_equal_covariance_closed_form():
    """Two classes with one covariance S: the equal-prior Bayes error is Phi(-Delta / 2), Delta the Mahalanobis
    distance of the means."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 4, generator=g, dtype=torch.float64)
    s = a @ a.T / 4 + 0.2 * torch.eye(4, dtype=torch.float64)
    means = torch.stack(
        [torch.zeros(4, dtype=torch.float64), torch.tensor([1.0, -0.5, 0.3, 0.2], dtype=torch.float64)]
    )
    m = GaussianMixture(means, torch.stack([s, s]), torch.tensor([0.9, 0.1], dtype=torch.float64))
    diff = means[1] - means[0]
    delta = float(diff @ torch.linalg.solve(s, diff)) ** 0.5
    exact = stats.norm.cdf(-delta / 2)
    n = 200_000
    x, y = m.sample([n, n], g)
    error = float((m.bayes_classify(x) != y).double().mean())
    se = math.sqrt(exact * (1 - exact) / (2 * n))
    assert abs(error - exact) < 4 * se
    assert 0.05 < exact < 0.5  # a non-trivial case


def test_gaussian_kl_matches_torch():
    m = random_mixture()
    expected = kl_divergence(
        MultivariateNormal(m.means[0], m.covs[0]), MultivariateNormal(m.means[1], m.covs[1])
    )
    assert gaussian_kl(m.means[0], m.covs[0], m.means[1], m.covs[1]) == pytest.approx(
        float(expected), rel=1e-9
    )
    assert gaussian_kl(m.means[2], m.covs[2], m.means[2], m.covs[2]) == pytest.approx(0, abs=1e-12)


def test_bhattacharyya_coefficient_matches_numerical_integration_in_1d():
    m1, v1, m2, v2 = 0.3, 0.5, -0.4, 1.7
    value, _ = integrate.quad(
        lambda x: math.sqrt(stats.norm.pdf(x, m1, v1**0.5) * stats.norm.pdf(x, m2, v2**0.5)), -30, 30
    )
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    got = bhattacharyya_coefficient(t(m1), t(v1)[None], t(m2), t(v2)[None])
    assert got == pytest.approx(value, rel=1e-7)


def test_plane_mixture_lives_in_a_plane_with_full_rank_covariances():
    m = plane_mixture([(0.0, 1.0), (1.0, 0.0)], [((0.2, 0.0), (0.0, 0.1))] * 2, 8, 0.01, [3, 1])
    eig = torch.linalg.eigvalsh(m.covs)
    assert (eig > 0.0099).all()  # full rank: the off-plane variance
    torch.testing.assert_close(eig[0, :6], torch.full((6,), 0.01, dtype=torch.float64))  # 6 off-plane dims
    torch.testing.assert_close(eig[0, 6:], torch.tensor([0.1, 0.2], dtype=torch.float64))
    assert float(m.means[0].norm()) == pytest.approx(1.0) and float(m.means[0] @ m.means[1]) == pytest.approx(
        0
    )
    torch.testing.assert_close(m.weights, torch.tensor([0.75, 0.25], dtype=torch.float64))


def test_bayes_denoiser_has_the_network_call_signature():
    m = random_mixture(dim=4)
    schedule = linear_schedule()
    net = BayesDenoiser(m, schedule.alpha_bars)
    x = torch.randn(3, 4, 1, 1)
    t, y, cond = torch.tensor([0, 500, 999]), torch.tensor([0, 1, 2]), torch.tensor([True, True, False])
    out = net(x, t, y, cond)
    assert out.shape == x.shape and out.dtype == torch.float32
    expected = m.eps_star(x.flatten(1).double(), schedule.alpha_bars.double()[t], y, cond)
    torch.testing.assert_close(out.flatten(1), expected.float())


# --- data=gaussian_lt ----------------------------------------------------------------------------------------------


def test_gaussian_lt_config_builds_the_long_tailed_mixture(tmp_path):
    dm = build.build_datamodule(compose_train(["data=gaussian_lt"], tmp_path))
    assert isinstance(dm, LongTailDataModule)
    assert dm.class_counts == [5000, 1077, 232, 50]  # int(5000 * 0.01 ** (c / 3))
    assert dm.shot_groups == {"many": [0], "med": [1, 2], "few": [3]}
    images = dm.train_set.images
    assert tuple(images.shape) == (6359, 16, 1, 1) and images.dtype == torch.float32
    torch.testing.assert_close(dm.mixture.weights.float(), dm.class_freq)
    x, _ = dm.on_after_batch_transfer((images[:5], dm.train_set.labels[:5]), 0)
    assert torch.equal(x, images[:5])  # no scaling, no flips
    assert images.abs().max() < 1  # inside the samplers' [-1, 1] clip


def test_gaussian_lt_head_and_tail_overlap_by_five_to_ten_percent(tmp_path):
    m = build.build_datamodule(compose_train(["data=gaussian_lt"], tmp_path)).mixture
    g = torch.Generator().manual_seed(3)
    n = 100_000
    head, tail = m.sample_class(0, n, g), m.sample_class(3, n, g)
    ones = torch.ones(n, dtype=torch.float64)
    ll_head, ll_tail = m.log_likelihoods(head, ones), m.log_likelihoods(tail, ones)
    error = 0.5 * float(
        (ll_head[:, 3] > ll_head[:, 0]).double().mean() + (ll_tail[:, 0] > ll_tail[:, 3]).double().mean()
    )
    assert 0.05 < error < 0.10


def test_gaussian_lt_draws_depend_on_the_seed(tmp_path):
    a = build.build_datamodule(compose_train(["data=gaussian_lt", "data.seed=1"], tmp_path)).train_set.images
    b = build.build_datamodule(compose_train(["data=gaussian_lt", "data.seed=1"], tmp_path)).train_set.images
    c = build.build_datamodule(compose_train(["data=gaussian_lt", "data.seed=2"], tmp_path)).train_set.images
    assert torch.equal(a, b) and not torch.equal(a, c)


# --- model=mlp -----------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_mlp_shapes_and_unconditional_branch(tmp_path):
    cfg = compose_train(["data=gaussian_lt", "model=mlp"], tmp_path)
    net = build.build_net(cfg, num_classes=4, in_channels=cfg.data.dim, image_size=1).eval()
    assert isinstance(net, ClassConditionalMLP) and (net.in_channels, net.image_size) == (16, 1)
    torch.nn.init.normal_(net.label_embedding.weight)  # clearly non-zero labels
    x = torch.randn(3, 16, 1, 1).expand(2, -1, -1, -1, -1).reshape(6, 16, 1, 1)  # rows i and i + 3 equal
    t = torch.tensor([5, 500, 900]).repeat(2)
    y = torch.tensor([0, 1, 2, 3, 2, 1])
    off = torch.zeros(6, dtype=torch.bool)
    out = net(x, t, y, off)
    assert out.shape == x.shape
    torch.testing.assert_close(out[:3], out[3:])  # no label embedding: the label does not matter
    on = net(x, t, y, ~off)
    assert not torch.allclose(on[:3], on[3:])  # with it, it does
    torch.testing.assert_close(
        on[2:3], net(x[2:3], t[2:3], y[2:3], ~off[2:3])
    )  # per sample, batch-independent


def test_mlp_flattens_any_input_and_takes_augment_parameters():
    net = ClassConditionalMLP(
        num_classes=3, in_channels=3, image_size=4, width=32, depth=1, emb_dim=16, num_aug_params=2
    )
    x = torch.randn(2, 3, 4, 4)
    args = (torch.tensor([1, 2]), torch.tensor([0, 2]), torch.tensor([True, True]))
    assert net(x, *args).shape == x.shape
    torch.testing.assert_close(net(x, *args), net(x, *args, aug=torch.zeros(2, 2)))  # zero = no augmentation
