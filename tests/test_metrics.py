"""Scores and reference cache against independent expectations: closed forms, hand-computed values,
and naive reference implementations written here (scipy sqrtm FID, dense-matrix precision/recall)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.linalg
import torch

from diffrop.evaluation.metrics import (
    Context,
    Sizes,
    check_all,
    compute_all,
    configure,
    feature_stats,
    fid_from_features,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    knn_radii,
    mmd2_unbiased,
    per_group,
    prd_f_beta,
    precision_recall,
)
from diffrop.evaluation.metrics import reference as reference_module
from diffrop.evaluation.metrics.prd import f_beta_score, prd_curve
from diffrop.evaluation.metrics.reference import ReferenceCache, make_key


# ------------------------------------------------------------------------------------------------ KID
def test_mmd2_unbiased_by_hand():
    """1-D features (d = 1), so k(a, b) = (a b + 1)^3; X = {0, 1, 2}, Y = {1, -1}, every term written out."""
    x, y = torch.tensor([[0.0], [1.0], [2.0]]), torch.tensor([[1.0], [-1.0]])
    # within X, i != j: k(0,1) = 1, k(0,2) = 1, k(1,2) = 27, each twice: 2 * 29 / (3 * 2)
    # within Y, i != j: k(1,-1) = 0, twice: 0
    # across: k(0,1) = 1, k(0,-1) = 1, k(1,1) = 8, k(1,-1) = 0, k(2,1) = 27, k(2,-1) = -1 -> 36 / 6 = 6
    assert mmd2_unbiased(x, y) == pytest.approx(58 / 6 + 0 - 2 * 6)
    assert mmd2_unbiased(y, x) == pytest.approx(mmd2_unbiased(x, y))  # symmetric


def test_kid_matches_torch_fidelity():
    from torch_fidelity.metric_kid import kid_features_to_metric

    rng = np.random.default_rng(3)
    real = torch.as_tensor(rng.normal(size=(60, 16)))
    fake = torch.as_tensor(rng.normal(size=(50, 16)) * 1.3 + 0.2)
    theirs = kid_features_to_metric(real, fake, kid_subsets=7, kid_subset_size=20, verbose=False, rng_seed=11,
                                    kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                                    kid_kernel_poly_coef0=1)  # fmt: skip
    mean, std = kernel_inception_distance(real, fake, subsets=7, subset_size=20, seed=11)
    assert mean == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-9)
    assert std == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-9)
    assert mean > 0.05  # the sets differ, visibly


def test_kid_is_unbiased_at_small_sizes_where_fid_is_not():
    """Both sets from N(0, I_8), 10 rows each (a few-shot group's scale): KID averages to 0 within its standard
    error over 400 draws, while FID (whose true value is 0 too) is biased far upwards at this size."""
    rng = np.random.default_rng(0)
    kids, fids = [], []
    for _ in range(400):
        real, fake = rng.normal(size=(10, 8)), rng.normal(size=(10, 8))
        kids.append(mmd2_unbiased(real, fake))
        fids.append(fid_from_features(real, fake))
    se = np.std(kids) / np.sqrt(len(kids))
    assert abs(np.mean(kids)) < 4 * se
    assert np.mean(fids) > 10 * np.std(fids) / np.sqrt(len(fids))


def test_kid_caps_the_subset_at_the_smaller_set():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(12, 4)), rng.normal(size=(9, 4)) + 1
    mean, std = kernel_inception_distance(real, fake, subsets=3, subset_size=1000, seed=0)
    # fake is used whole (9 rows) in every subset, real is subsampled to 9 rows: a std would not describe fake
    assert mean > 0 and std is None
    one, spread = kernel_inception_distance(real[:9], fake, subsets=5, subset_size=1000, seed=0)
    assert one == pytest.approx(mmd2_unbiased(real[:9], fake)) and spread is None  # whole sets, reordered
    with pytest.raises(ValueError, match="subsets"):
        kernel_inception_distance(real, fake, subsets=0)


def test_kid_std_is_reported_once_both_sets_are_subsampled():
    """Subsets of 5 from 12 and 9 rows differ between draws, so their KIDs spread: the std is their np.std."""
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(12, 4)), rng.normal(size=(9, 4)) + 1
    mean, std = kernel_inception_distance(real, fake, subsets=4, subset_size=5, seed=0)
    draw = np.random.RandomState(0)
    kids = []
    for _ in range(4):
        r, f = draw.choice(12, 5, replace=False), draw.choice(9, 5, replace=False)
        kids.append(mmd2_unbiased(real[r], fake[f]))
    assert mean == pytest.approx(np.mean(kids)) and std == pytest.approx(np.std(kids)) and std > 0


# ------------------------------------------------------------------------------------------------ FID
def _fid_scipy(f1: np.ndarray, f2: np.ndarray) -> float:
    """The classic pytorch-fid / TTUR formula: np.cov + scipy.linalg.sqrtm of the covariance product."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_feature_stats_match_numpy():
    f = np.random.default_rng(0).normal(size=(300, 7)) * np.arange(1, 8)
    mu, sigma = feature_stats(torch.as_tensor(f, dtype=torch.float32))
    np.testing.assert_allclose(mu, f.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(f, rowvar=False), rtol=1e-5, atol=1e-5)


def test_fid_of_a_set_with_itself_is_zero():
    f = np.random.default_rng(1).normal(size=(500, 32))
    assert abs(fid_from_features(f, f)) < 1e-6


def test_fid_equals_scipy_sqrtm_reference():
    rng = np.random.default_rng(2)
    f1 = rng.normal(size=(400, 24)) @ rng.normal(size=(24, 24))
    f2 = rng.normal(size=(350, 24)) @ rng.normal(size=(24, 24)) + 0.5
    expected = _fid_scipy(f1, f2)
    assert fid_from_features(torch.as_tensor(f1), torch.as_tensor(f2)) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_closed_form_of_two_gaussians():
    """Exact parameters: ||m1 - m2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2) with scipy's sqrtm."""
    m1, m2 = np.array([0.0, 1.0, -1.0]), np.array([1.0, 0.0, 2.0])
    a = np.array([[1.0, 0.3, 0.0], [0.0, 1.2, 0.5], [0.2, 0.0, 0.8]])
    s1, s2 = a @ a.T, np.diag([0.5, 2.0, 1.5])
    expected = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-9)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 for standard deviations s1, s2
    assert frechet_distance(
        np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])
    ) == pytest.approx(4.0 + 1.0)
    # ... and FID on large samples of those Gaussians approaches it
    rng = np.random.default_rng(3)
    f1 = rng.multivariate_normal(m1, s1, size=200_000)
    f2 = rng.multivariate_normal(m2, s2, size=200_000)
    assert fid_from_features(f1, f2) == pytest.approx(expected, rel=0.01)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ------------------------------------------------------------------------------------------------- IS
def test_inception_score_uniform_logits_is_one():
    mean, std = inception_score(torch.zeros(1000, 1008))
    assert mean == pytest.approx(1.0, abs=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("num_classes", [1, 10, 100])
def test_inception_score_confident_balanced_is_num_classes(num_classes):
    """p(y|x) one-hot and p(y) uniform over K classes: KL = log K for every x, so IS = K."""
    labels = torch.arange(num_classes * 20) % num_classes  # balanced in every contiguous split of 10
    logits = torch.full((len(labels), 1008), -1e4).scatter_(1, labels[:, None], 0.0)
    mean, std = inception_score(logits, splits=10, shuffle=False)
    assert mean == pytest.approx(num_classes, rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-9)
    assert inception_score(logits, splits=1)[0] == pytest.approx(num_classes, rel=1e-9)  # shuffled, one split


def test_inception_score_hand_computed_two_classes():
    """Two samples, p1 = (1, 0), p2 = (1/2, 1/2): p(y) = (3/4, 1/4),
    KL1 = log(4/3), KL2 = 1/2 log(2/3) + 1/2 log 2, IS = exp((KL1 + KL2) / 2)."""
    logits = torch.tensor([[0.0, -1e4], [0.0, 0.0]])
    kl1, kl2 = np.log(4 / 3), 0.5 * np.log(2 / 3) + 0.5 * np.log(2)
    assert inception_score(logits, splits=1)[0] == pytest.approx(np.exp((kl1 + kl2) / 2), rel=1e-12)


# ------------------------------------------------------------------------------------- precision/recall
def _precision_recall_dense(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Kynkaanniemi et al. 2019 straight from the definition, with full distance matrices."""

    def dist(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    r_real = np.sort(dist(real, real), axis=1)[:, k]  # column 0 is the point itself
    r_fake = np.sort(dist(fake, fake), axis=1)[:, k]
    precision = (dist(fake, real) <= r_real[None, :]).any(1).mean()
    recall = (dist(real, fake) <= r_fake[None, :]).any(1).mean()
    return float(precision), float(recall)


def test_knn_radius_excludes_the_point_itself():
    x = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    assert knn_radii(x, k=1).tolist() == [1.0, 1.0, 2.0]
    assert knn_radii(x, k=2).tolist() == [3.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="k must be"):
        knn_radii(x, k=3)


def test_precision_recall_hand_computed_1d():
    """k = 1. real {0, 1, 3, -30}: radii 1, 1, 2, 30. fake {0.5, 5, 10}: radii 4.5, 4.5, 5.
    precision: 0.5 in B(0, 1); 5 on the boundary of B(3, 2) (closed ball); 10 in none -> 2/3.
    recall: 0, 1, 3 within 4.5 of 0.5 or 5; -30 is 30.5 from 0.5 -> 3/4."""
    real = torch.tensor([[0.0], [1.0], [3.0], [-30.0]])
    fake = torch.tensor([[0.5], [5.0], [10.0]])
    out = precision_recall(real, fake, k=1)
    assert out["precision"] == pytest.approx(2 / 3)
    assert out["recall"] == pytest.approx(3 / 4)


def test_precision_recall_identical_and_disjoint_sets():
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    assert precision_recall(x, x.clone(), k=5) == {"precision": 1.0, "recall": 1.0}
    assert precision_recall(x, x + 1000.0, k=5) == {"precision": 0.0, "recall": 0.0}


def test_precision_recall_matches_dense_reference_and_chunking_is_exact():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(300, 8))
    fake = rng.normal(size=(250, 8)) * 1.3 + 0.4
    expected = _precision_recall_dense(real, fake, k=5)
    full = precision_recall(real, fake, k=5, chunk=100_000)
    assert (full["precision"], full["recall"]) == pytest.approx(expected, abs=1e-12)
    assert 0.0 < expected[0] < 1.0 and 0.0 < expected[1] < 1.0  # a non-trivial case
    assert precision_recall(real, fake, k=5, chunk=7) == full


def test_precision_recall_distance_blocks_are_bounded_by_chunk(monkeypatch):
    """Memory bound: every distance block is at most chunk x N, never the dense N x N matrix."""
    shapes = []
    real_cdist = torch.cdist

    def spy(a, b, *args, **kwargs):
        shapes.append((a.shape[0], b.shape[0]))
        return real_cdist(a, b, *args, **kwargs)

    monkeypatch.setattr(torch, "cdist", spy)
    x, y = torch.randn(300, 4), torch.randn(200, 4)
    precision_recall(x, y, k=3, chunk=64)
    assert shapes and max(rows for rows, _ in shapes) <= 64
    assert {cols for _, cols in shapes} == {300, 200}


# -------------------------------------------------------------------------------------- PRD / F_beta
def test_prd_curve_and_f_beta_hand_computed():
    """eval (1/2, 1/2, 0), ref (0, 1/2, 1/2): alpha(l) = min(l/2, 1/2), beta(l) = min(1/2, 1/(2l));
    F_beta is largest at l = 1 where p = r = 1/2, for every beta."""
    precision, recall = prd_curve(np.array([0.5, 0.5, 0.0]), np.array([0.0, 0.5, 0.5]), num_angles=1001)
    lam = np.tan(np.linspace(1e-10, np.pi / 2 - 1e-10, 1001))
    np.testing.assert_allclose(precision, np.minimum(lam / 2, 0.5))
    np.testing.assert_allclose(recall, np.minimum(0.5, 0.5 / lam))
    assert f_beta_score(precision, recall, 8).max() == pytest.approx(0.5, abs=1e-6)
    assert f_beta_score(precision, recall, 1 / 8).max() == pytest.approx(0.5, abs=1e-6)


def _blobs(centres: np.ndarray, n_per: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([c + 0.1 * rng.normal(size=(n_per, centres.shape[1])) for c in centres])


def test_prd_f_beta_identical_and_disjoint():
    centres = np.random.default_rng(5).normal(size=(4, 6)) * 10
    real = _blobs(centres, 50, seed=6)
    f_8, f_1_8 = prd_f_beta(real, real.copy(), num_clusters=20, num_runs=2)
    assert f_8 == pytest.approx(1.0, abs=1e-6) and f_1_8 == pytest.approx(1.0, abs=1e-6)
    f_8, f_1_8 = prd_f_beta(real, real + 1000.0, num_clusters=20, num_runs=2)
    assert f_8 == pytest.approx(0.0, abs=1e-6) and f_1_8 == pytest.approx(0.0, abs=1e-6)


def test_prd_f_beta_mode_dropping_lowers_f8_only():
    """fake covers 2 of real's 4 equal modes: eval = (1/2, 1/2, 0, 0) vs ref = 1/4 each, so
    alpha(l) = min(l/2, 1), beta(l) = min(1/2, 1/l); maxima F_8 = 65/129 at l = 2 and
    F_1/8 = (65/64 * 1/2) / (1/64 + 1/2) = 65/66 (recall 1/2, precision 1)."""
    centres = np.eye(4, 6) * 20
    real = _blobs(centres, 100, seed=7)
    fake = _blobs(centres[:2], 200, seed=8)
    f_8, f_1_8 = prd_f_beta(real, fake, num_clusters=4, num_runs=3, kmeans="sklearn")
    assert f_8 == pytest.approx(65 / 129, abs=0.01)
    assert f_1_8 == pytest.approx(65 / 66, abs=0.01)


# ------------------------------------------------------------------------------------ per-shot / all
def test_per_group_selects_the_classes():
    real = torch.arange(12.0)[:, None].repeat(1, 2)
    real_y = torch.arange(12) % 3
    fake = torch.arange(6.0)[:, None].repeat(1, 2)
    fake_y = torch.tensor([0, 0, 1, 2, 2, 2])
    out = per_group(
        lambda r, f: (r[:, 0].tolist(), f[:, 0].tolist()),
        real,
        real_y,
        fake,
        fake_y,
        {"a": [0], "bc": [1, 2]},
    )
    assert out["a"] == ([0.0, 3.0, 6.0, 9.0], [0.0, 1.0])
    assert out["bc"] == ([1.0, 2.0, 4.0, 5.0, 7.0, 8.0, 10.0, 11.0], [2.0, 3.0, 4.0, 5.0])
    with pytest.raises(ValueError, match="group 'none'"):
        per_group(lambda r, f: 0, real, real_y, fake, fake_y, {"none": [7]})


def _settings(**prd) -> dict:
    """configs/eval.yaml's metric nodes, written out, with ``prd`` values on top, built by their metrics."""
    return configure({
        "fid": {}, "kid": {"subsets": 100, "subset_size": 1000}, "inception_score": {"splits": 10},
        "precision_recall": {"k": 5}, "prd": {"clusters_per_class": 20, "runs": 10, "kmeans": "sklearn"} | prd,
    })  # fmt: skip


def test_compute_all_keys_and_consistency():
    rng = np.random.default_rng(9)
    real = torch.as_tensor(rng.normal(size=(120, 12)), dtype=torch.float32)
    fake = torch.as_tensor(rng.normal(size=(120, 12)) + 0.2, dtype=torch.float32)
    real_y, fake_y = torch.arange(120) % 3, torch.arange(120) % 3
    groups = {"many": [0], "few": [1, 2]}
    out = compute_all(
        real, real_y, fake, None, fake_y, groups, _settings(runs=1), Context(num_classes=3, seed=0)
    )
    assert set(out) == {"fid", "kid", "kid_std", "is_mean", "is_std", "precision", "recall", "f_8", "f_1_8",
                        "per_shot"}  # fmt: skip
    assert out["is_mean"] is None and out["is_std"] is None
    assert out["fid"] == pytest.approx(_fid_scipy(real.double().numpy(), fake.double().numpy()), rel=1e-6)
    many_real, many_fake = real[real_y == 0].double().numpy(), fake[fake_y == 0].double().numpy()
    assert out["per_shot"]["many"]["fid"] == pytest.approx(_fid_scipy(many_real, many_fake), rel=1e-6)
    _, recall = _precision_recall_dense(many_real, many_fake, k=5)
    assert out["per_shot"]["many"]["recall"] == pytest.approx(recall)
    assert out["kid"] == pytest.approx(kernel_inception_distance(real, fake, 100, 1000, seed=0)[0])
    assert out["per_shot"]["many"]["kid"] == pytest.approx(  # 40 + 40 rows: every subset is the whole group
        mmd2_unbiased(real[real_y == 0], fake[fake_y == 0])
    )
    assert 0.0 <= out["f_8"] <= 1.0 and 0.0 <= out["f_1_8"] <= 1.0
    logits, stages = torch.zeros(120, 1008), []
    with_is = compute_all(
        real, real_y, fake, logits, fake_y, groups, _settings(runs=1), Context(3, 0), stages.append
    )
    assert with_is["is_mean"] == pytest.approx(1.0)
    assert [name.split(" (")[0] for name in stages] == [  # a progress line before each score, IS only with logits
        "FID", "KID", "Inception Score", "precision / recall", "F_8 / F_1/8", "per-shot FID, KID, precision / recall"
    ]  # fmt: skip
    keys = ["fid", "kid", "kid_std", "is_mean", "is_std", "precision", "recall", "f_8", "f_1_8"]
    assert list(with_is)[:9] == keys  # FID first in results.json and the table


def test_every_metric_module_is_registered_and_has_its_settings_node():
    """A score is a module with a ``METRIC`` (found, not listed) plus its block in configs/eval.yaml's
    ``eval.metrics``: each module is registered under its node's name, no two scores write the same key."""
    from omegaconf import OmegaConf

    from diffrop.evaluation.metrics import REGISTRY
    from tests.helpers.train_utils import CONFIG_DIR

    node = OmegaConf.load(CONFIG_DIR / "eval.yaml").eval.metrics
    assert list(node) == [
        "fid",
        "kid",
        "inception_score",
        "precision_recall",
        "prd",
    ]  # FID first in results.json
    assert set(REGISTRY) == set(node)
    keys = [k for m in REGISTRY.values() for k in m.keys]
    assert len(keys) == len(set(keys))
    assert all(set(m.per_shot) <= set(m.keys) for m in REGISTRY.values())


def test_each_metric_checks_its_own_settings_and_the_set_sizes():
    """Bad values and set sizes too small for a score fail with a line naming the metric's own key."""
    with pytest.raises(ValueError, match=r"eval\.metrics\.kid\.subsets must be > 0, got 0"):
        configure({"kid": {"subsets": 0, "subset_size": 10}})
    with pytest.raises(ValueError, match=r"eval\.metrics\.prd\.kmeans='faiss' is not one of"):
        _settings(kmeans="faiss")
    with pytest.raises(ValueError, match=r"eval\.metrics\.kid has no setting 'k'"):
        configure({"kid": {"subsets": 1, "subset_size": 10, "k": 3}})
    with pytest.raises(ValueError, match=r"eval\.metrics\.kid\.subset_size is not set"):
        configure({"kid": {"subsets": 1}})
    with pytest.raises(ValueError, match=r"eval\.metrics\.nope names no metric"):
        configure({"nope": {}})
    settings = _settings(clusters_per_class=2)
    # 3 classes x 2 clusters = 6 <= 2 x 12 points; 6 samples a side per group > k = 5
    roomy = Sizes(generated=12, reference=12, num_classes=3, groups={"many": (6, 6), "few": (6, 6)})
    with pytest.raises(
        ValueError, match=r"eval\.num_samples=12 is below eval\.metrics\.inception_score\.splits"
    ):
        check_all(settings | configure({"inception_score": {"splits": 13}}), roomy)
    check_all(settings | configure({"inception_score": {"splits": 12}}), roomy)  # no error
    with pytest.raises(
        ValueError, match=r"shot group 'few' has 5 reference samples, need more than eval\.metrics"
    ):
        check_all(settings, Sizes(12, 12, 3, {"many": (6, 6), "few": (6, 5)}))
    with pytest.raises(ValueError, match=r"7 = eval\.metrics\.prd\.clusters_per_class \(7\) x 1 classes"):
        check_all({"prd": _settings(clusters_per_class=7)["prd"]}, Sizes(3, 9, 1, {"all": (9, 9)}))
    assert Sizes.of(torch.tensor([0, 1, 1, 2]), torch.tensor([2, 2]), {"a": [0, 1], "b": [2]}, 3).groups == {
        "a": (3, 0), "b": (1, 2)
    }  # fmt: skip


# ------------------------------------------------------------------------------------- reference cache
def test_reference_cache_computes_once_and_reloads(tmp_path):
    calls = []
    features, labels = torch.randn(40, 5), torch.arange(40) % 4

    def compute():
        calls.append(1)
        return features, labels

    key = make_key("cifar10-train", "inception-v3-compat", None)
    first = ReferenceCache(tmp_path).get_or_compute(key, compute)
    second = ReferenceCache(tmp_path).get_or_compute(key, compute)  # a fresh object: served from disk
    assert len(calls) == 1
    for got in (first, second):
        assert torch.equal(got[0], features) and torch.equal(got[1], labels)
    assert [p.name for p in tmp_path.iterdir()] == [ReferenceCache(tmp_path).path(key).name]


def test_make_key_tracks_the_weights_file_content(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"one")
    first = make_key("cifar10-train", "inception-v3-compat", weights)
    assert first.startswith("cifar10-train-inception-v3-compat-")
    assert make_key("cifar10-train", "inception-v3-compat", weights) == first
    weights.write_bytes(b"two")
    assert make_key("cifar10-train", "inception-v3-compat", weights) != first
    assert make_key("cifar10-train", "inception-v3-compat", None).endswith("-default")


def test_reference_cache_class_subset_stats(tmp_path):
    cache = ReferenceCache(tmp_path)
    features, labels = torch.randn(60, 3, dtype=torch.float64), torch.arange(60) % 3
    cache.save("k", features, labels)
    mu, sigma = cache.stats("k", classes=[2, 0])
    subset = features[(labels == 0) | (labels == 2)].numpy()
    np.testing.assert_allclose(mu, subset.mean(0))
    np.testing.assert_allclose(sigma, np.cov(subset, rowvar=False))
    with pytest.raises(KeyError, match="no reference features"):
        cache.stats("missing")


def test_reference_cache_writes_atomically(tmp_path, monkeypatch):
    cache = ReferenceCache(tmp_path / "ref")
    final = cache.path("key")
    replaced = []
    real_replace = os.replace

    def spy_replace(src, dst):
        assert not final.exists()  # nothing under the final name until the rename
        replaced.append((os.fspath(src), os.fspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy_replace)  # diffrop.runtime.atomic_write renames with os.replace
    cache.save("key", torch.randn(4, 2), torch.arange(4))
    ((src, dst),) = replaced
    assert os.path.dirname(src) == os.path.dirname(dst) == str(tmp_path / "ref") and src != dst
    assert dst == str(final) and final.is_file()

    def broken_save(*args, **kwargs):  # a crash in the middle of writing
        raise OSError("disk full")

    monkeypatch.setattr(reference_module.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        cache.save("other", torch.randn(4, 2), torch.arange(4))
    assert not cache.path("other").exists()
    assert sorted(p.name for p in (tmp_path / "ref").iterdir()) == [final.name]  # no temp file left
