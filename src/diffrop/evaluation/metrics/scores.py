"""Sample-quality scores over precomputed Inception features (protocol: docs/design.md section 3).

Pure functions: no network is loaded here, so every score is testable on plain tensors. Convention
throughout: ``real`` is the reference set (the balanced training set), ``fake`` the generated set.
Inputs may be torch tensors (any device: the heavy parts run where the features are) or NumPy arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.cluster import MiniBatchKMeans
from torch import Tensor

Features = Tensor | np.ndarray


def _matrix(x: Features, dtype: torch.dtype | None = None) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2:
        raise ValueError(f"expected a feature matrix of shape [N, D], got shape {tuple(t.shape)}")
    return t if dtype is None else t.to(dtype)


# ----------------------------------------------------------------------------------------------- FID
def feature_stats(features: Features) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] (as ``np.cov(f, rowvar=False)``), float64.

    Computed with torch on the features' device, so 50k x 2048 features on a GPU take well under a second.
    """
    x = _matrix(features, torch.float64)
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {x.shape[0]}")
    mu = x.mean(0)
    xc = x - mu
    sigma = xc.T @ xc / (x.shape[0] - 1)
    return mu.cpu().numpy(), sigma.cpu().numpy()


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance of two Gaussians (Heusel et al. 2017, Eq. 6; Dowson & Landau 1982).

    d^2 = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}). The trace of the square root is taken as
    sum_i sqrt(lambda_i(S1 S2)): S1 S2 is similar to the PSD matrix S1^{1/2} S2 S1^{1/2}, so its eigenvalues
    are real and >= 0 and no matrix square root (scipy ``sqrtm``, slow and fragile) is needed. This is
    torch-fidelity's computation; round-off imaginary / negative parts are dropped by taking the real part.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"shape mismatch: mu1 {mu1.shape}, mu2 {mu2.shape}, sigma1 {sigma1.shape}, sigma2 {sigma2.shape}; "
            "both statistics must come from features of the same dimension"
        )
    diff = mu1 - mu2
    eigenvalues = np.linalg.eigvals(sigma1 @ sigma2).astype(np.complex128)
    tr_covmean = np.sqrt(eigenvalues).real.sum()
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def fid_from_features(features1: Features, features2: Features) -> float:
    """FID between two feature sets (pool3, 2048-d, for the standard Inception FID)."""
    return frechet_distance(*feature_stats(features1), *feature_stats(features2))


# ----------------------------------------------------------------------------------------------- KID
def polynomial_kernel(x: Tensor, y: Tensor, degree: int = 3, coef0: float = 1.0) -> Tensor:
    """k(x, y) = (x . y / d + coef0)^degree, [N, M] (d = feature dim): KID's kernel (Binkowski et al. 2018)."""
    return (x @ y.T / x.shape[1] + coef0) ** degree


def mmd2_unbiased(real: Features, fake: Features) -> float:
    """Unbiased estimate of the squared MMD with the cubic polynomial kernel (Binkowski et al. 2018,
    "Demystifying MMD GANs"; Gretton et al. 2012's unbiased estimator):
    the within-set means leave out the diagonal k(x_i, x_i), the cross term averages all pairs; its
    expectation is 0 when both sets come from the same distribution, at any set size. float64 on the
    features' device.
    """
    x, y = _matrix(real, torch.float64), _matrix(fake, torch.float64)
    device = y.device if y.is_cuda else x.device
    x, y = x.to(device), y.to(device)
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"need two [N >= 2, D] feature sets of the same D, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    k_xx, k_yy = polynomial_kernel(x, x), polynomial_kernel(y, y)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2 * polynomial_kernel(x, y).mean())


def kernel_inception_distance(
    real: Features, fake: Features, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float | None]:
    """KID (Binkowski et al. 2018): mean and (population) std of ``mmd2_unbiased`` over ``subsets`` pairs of
    random subsets of ``subset_size`` rows, drawn without replacement from each set. torch-fidelity's protocol
    and numbers (``kid_features_to_metric``: NumPy ``RandomState(seed)``, the first set's subset drawn first),
    except that the subset size is capped at the smaller set instead of refused, for per-shot groups.

    The std is None when a set fits in one subset (e.g. ``num_samples <= subset_size``): every subset then holds
    that whole set, so the spread says nothing about it (and is exactly 0 when both sets fit).
    """
    real_t, fake_t = _matrix(real), _matrix(fake)
    size = min(subset_size, real_t.shape[0], fake_t.shape[0])
    if subsets < 1 or size < 2:
        raise ValueError(f"need subsets >= 1 and at least 2 rows per set, got {subsets=} and {size} rows")
    rng = np.random.RandomState(seed)
    values = []
    for _ in range(subsets):
        pick_real = torch.as_tensor(rng.choice(real_t.shape[0], size, replace=False), device=real_t.device)
        pick_fake = torch.as_tensor(rng.choice(fake_t.shape[0], size, replace=False), device=fake_t.device)
        values.append(mmd2_unbiased(real_t[pick_real], fake_t[pick_fake]))
    whole = size in (real_t.shape[0], fake_t.shape[0])
    return float(np.mean(values)), None if whole else float(np.std(values))


# ------------------------------------------------------------------------------------------------ IS
def inception_score(
    logits: Features, splits: int = 10, shuffle: bool = True, seed: int = 2020
) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), mean and std over ``splits``.

    p(y) is the marginal within each split. Same computation as torch-fidelity (float64 softmax of the
    unbiased logits, rows shuffled with NumPy seed 2020, population std), so the numbers agree with it;
    classes whose probability underflows to 0 contribute 0 (0 log 0) instead of torch-fidelity's NaN.
    """
    x = _matrix(logits, torch.float64)
    n = x.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"splits must be in [1, N={n}], got {splits}")
    if shuffle:
        x = x[torch.as_tensor(np.random.RandomState(seed).permutation(n), device=x.device)]
    log_p = x.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        log_p_chunk = log_p[i * n // splits : (i + 1) * n // splits]
        p_chunk = log_p_chunk.exp()
        log_marginal = p_chunk.mean(0, keepdim=True).log()
        terms = torch.where(p_chunk > 0, p_chunk * (log_p_chunk - log_marginal), 0.0)  # 0 log 0 = 0
        kl = terms.sum(1).mean()
        scores.append(kl.exp().item())
    return float(np.mean(scores)), float(np.std(scores))


# ---------------------------------------------------------------------------- improved precision/recall
def knn_radii(features: Tensor, k: int, chunk: int = 10000) -> Tensor:
    """Distance of every row to its k-th nearest neighbour in the same set, the row itself excluded.

    Chunked over rows: the peak is one [chunk, N] distance block. The (k+1)-th smallest distance is taken
    because each row's smallest distance is the 0 to itself.
    """
    n = features.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, N-1] = [1, {n - 1}] for the k-NN radius, got k={k}")
    return torch.cat(
        [
            torch.cdist(block, features).topk(k + 1, dim=1, largest=False).values[:, -1]
            for block in features.split(chunk)
        ]
    )


def _fraction_inside(points: Tensor, centres: Tensor, radii: Tensor, chunk: int) -> float:
    """Share of ``points`` inside at least one ball B(centre_j, radius_j) (closed ball, as in the paper)."""
    inside = [(torch.cdist(block, centres) <= radii).any(dim=1) for block in points.split(chunk)]
    return torch.cat(inside).double().mean().item()


def precision_recall(
    real: Features, fake: Features, k: int = 5, chunk: int = 10000, dtype: torch.dtype = torch.float64
) -> dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, Eq. 1-3).

    The manifold of a set is the union of balls around its samples with radius = distance to the k-th
    nearest neighbour (self excluded). precision = share of fake samples inside the real manifold, recall =
    share of real samples inside the fake manifold. Distances are computed block-wise with ``torch.cdist``
    on the features' device (a GPU if either set lives on one): peak memory is O(chunk x N) elements, never
    the dense N x N matrix (chunk = 10000, N = 50000 in float64: 4 GB per block). ``dtype`` float64 keeps
    the ball-membership test free of float32 / TF32 round-off; float32 halves memory and time.
    """
    real_t, fake_t = _matrix(real), _matrix(fake)
    if real_t.shape[1] != fake_t.shape[1]:
        raise ValueError(f"feature dims differ: real {real_t.shape[1]}, fake {fake_t.shape[1]}")
    device = real_t.device if real_t.is_cuda else fake_t.device
    real_t, fake_t = real_t.to(device, dtype), fake_t.to(device, dtype)
    precision = _fraction_inside(fake_t, real_t, knn_radii(real_t, k, chunk), chunk)
    recall = _fraction_inside(real_t, fake_t, knn_radii(fake_t, k, chunk), chunk)
    return {"precision": precision, "recall": recall}


# ------------------------------------------------------------------- PRD: F_8 and F_1/8 (Sajjadi 2018)
def prd_curve(eval_dist: np.ndarray, ref_dist: np.ndarray, num_angles: int = 1001, epsilon: float = 1e-10):
    """PRD curve of two histograms (Sajjadi et al. 2018, Thm. 2): for slope lambda = tan(angle),
    alpha(lambda) = sum_i min(lambda * ref_i, eval_i), beta(lambda) = alpha(lambda) / lambda.

    Returns (precision, recall), each [num_angles], over angles equally spaced in [eps, pi/2 - eps].
    """
    slopes = np.tan(np.linspace(epsilon, np.pi / 2 - epsilon, num_angles))
    precision = np.minimum(ref_dist[None, :] * slopes[:, None], eval_dist[None, :]).sum(axis=1)
    return precision, precision / slopes


def f_beta_score(
    precision: np.ndarray, recall: np.ndarray, beta: float, epsilon: float = 1e-10
) -> np.ndarray:
    """F_beta = (1 + beta^2) p r / (beta^2 p + r) (Sajjadi et al. 2018, Sec. 4; eps as in their code)."""
    return (1 + beta**2) * precision * recall / (beta**2 * precision + recall + epsilon)


# sklearn: the reference code's MiniBatchKMeans, the default wherever the features are. torch: an explicit opt-in
# (fast on a GPU) whose F_8 is not the reference's under the paper protocol (README, "eval.kmeans").
KMEANS_BACKENDS = ("sklearn", "torch")


def check_kmeans(kmeans: str) -> str:
    if kmeans not in KMEANS_BACKENDS:
        raise ValueError(f"kmeans must be one of {KMEANS_BACKENDS}, got {kmeans!r}")
    return kmeans


def cluster_labels(union: Features, num_clusters: int, seed: int, kmeans: str = "sklearn") -> np.ndarray:
    """k-means labels [N] of the rows of ``union`` (one PRD run), by the backend ``kmeans``:

    ``sklearn``: the reference code's ``MiniBatchKMeans(n_init=10)`` (CPU, float64); ``torch``:
    ``metrics.kmeans.kmeans`` on the features' device (the same seeding protocol, then full-batch Lloyd).
    """
    if check_kmeans(kmeans) == "torch":
        from diffrop.evaluation.metrics.kmeans import kmeans as torch_kmeans

        u = _matrix(union)
        dtype = u.dtype if u.dtype in (torch.float32, torch.float64) else torch.float32
        return torch_kmeans(u.to(dtype), num_clusters, n_init=10, seed=seed)[0].cpu().numpy()
    x = union.detach().cpu().numpy() if isinstance(union, Tensor) else np.asarray(union)
    return (
        MiniBatchKMeans(n_clusters=num_clusters, n_init=10, random_state=seed)
        .fit(x.astype(np.float64, copy=False))
        .labels_
    )


def prd_f_beta(
    real: Features,
    fake: Features,
    num_clusters: int,
    num_runs: int = 10,
    num_angles: int = 1001,
    beta: float = 8.0,
    seed: int = 0,
    kmeans: str = "sklearn",
) -> tuple[float, float]:
    """(F_beta, F_1/beta) of fake w.r.t. real, following Sajjadi et al.'s reference code
    (``compute_prd_from_embedding`` then ``prd_to_max_f_beta_pair``).

    Each run clusters the union of both sets into ``num_clusters`` (20 x C in docs/design.md) and takes the two
    cluster histograms; the PRD curves of the runs are averaged, then F_beta / F_1/beta are the maxima over
    the averaged curve. F_8 tracks recall, F_1/8 precision. ``kmeans`` picks the clustering (``cluster_labels``):
    ``sklearn`` is the reference code's ``MiniBatchKMeans(n_init=10)``, ``torch`` k-means on the features' device.
    Sets of unequal size are subsampled (seeded) to the smaller size, since the reference code rejects unequal
    sets (an unbalanced union biases the clustering towards the larger set).
    """
    real_t, fake_t = _matrix(real), _matrix(fake)
    device = real_t.device if real_t.is_cuda else fake_t.device
    backend = check_kmeans(kmeans)
    rng = np.random.RandomState(seed)
    n = min(len(real_t), len(fake_t))
    if len(real_t) > n:
        real_t = real_t[
            torch.as_tensor(np.sort(rng.choice(len(real_t), n, replace=False)), device=real_t.device)
        ]
    if len(fake_t) > n:
        fake_t = fake_t[
            torch.as_tensor(np.sort(rng.choice(len(fake_t), n, replace=False)), device=fake_t.device)
        ]
    if not 1 <= num_clusters <= 2 * n:
        raise ValueError(f"num_clusters must be in [1, {2 * n}] for {n} + {n} samples, got {num_clusters}")

    if backend == "torch":
        union: Features = torch.cat([fake_t.to(device), real_t.to(device)])
    else:
        union = np.concatenate([t.detach().cpu().numpy().astype(np.float64) for t in (fake_t, real_t)])
    curves = []
    for run in range(num_runs):
        labels = cluster_labels(union, num_clusters, seed + run, backend)
        eval_dist = np.bincount(labels[:n], minlength=num_clusters) / n
        ref_dist = np.bincount(labels[n:], minlength=num_clusters) / n
        curves.append(prd_curve(eval_dist, ref_dist, num_angles))
    precision, recall = np.mean(curves, axis=0)
    return (
        float(f_beta_score(precision, recall, beta).max()),
        float(f_beta_score(precision, recall, 1.0 / beta).max()),
    )


# --------------------------------------------------------------------------------- per-shot and all
def per_group(
    fn: Callable[[Tensor, Tensor], Any],
    real: Features,
    real_labels: Features,
    fake: Features,
    fake_labels: Features,
    groups: Mapping[str, Sequence[int]],
) -> dict[str, Any]:
    """{group: fn(real rows of the group's classes, fake rows of those classes)} (paper Table 2 per-shot)."""
    real_t, fake_t = _matrix(real), _matrix(fake)
    real_y, fake_y = (
        torch.as_tensor(real_labels).to(real_t.device),
        torch.as_tensor(fake_labels).to(fake_t.device),
    )
    if real_y.shape != (real_t.shape[0],) or fake_y.shape != (fake_t.shape[0],):
        raise ValueError("labels must be 1-D with one label per feature row")
    out = {}
    for name, classes in groups.items():
        real_g = real_t[torch.isin(real_y, torch.as_tensor(list(classes), device=real_y.device))]
        fake_g = fake_t[torch.isin(fake_y, torch.as_tensor(list(classes), device=fake_y.device))]
        if len(real_g) < 2 or len(fake_g) < 2:
            raise ValueError(
                f"group {name!r} (classes {list(classes)}) has {len(real_g)} real and {len(fake_g)} fake samples; "
                "each needs at least 2 (check the labels and the group definition)"
            )
        out[name] = fn(real_g, fake_g)
    return out


def per_class(
    real: Features,
    real_labels: Features,
    fake: Features,
    fake_labels: Features,
    num_classes: int,
    *,
    k: int = 5,
    chunk: int = 10000,
    min_fid_samples: int = 500,
) -> dict[str, list[float | None]]:
    """Scores of each class's generated samples against the same class's references, as lists indexed by class.

    The long-tail picture (a tail class's recall against its training count): ``precision`` / ``recall`` where
    both sides have more than ``k`` samples, ``fid`` where both have at least ``min_fid_samples`` (a covariance
    from fewer than that many 2048-d features is mostly noise), None elsewhere; ``num_real`` / ``num_fake``.
    """
    real_t, fake_t = _matrix(real), _matrix(fake)
    real_y, fake_y = (
        torch.as_tensor(real_labels).to(real_t.device),
        torch.as_tensor(fake_labels).to(fake_t.device),
    )
    out: dict[str, list] = {"precision": [], "recall": [], "fid": [], "num_real": [], "num_fake": []}
    for c in range(num_classes):
        real_c, fake_c = real_t[real_y == c], fake_t[fake_y == c]
        n = min(len(real_c), len(fake_c))
        pr = precision_recall(real_c, fake_c, k=k, chunk=chunk) if n > k else {}
        out["precision"].append(pr.get("precision"))
        out["recall"].append(pr.get("recall"))
        out["fid"].append(fid_from_features(real_c, fake_c) if n >= max(min_fid_samples, 2) else None)
        out["num_real"].append(len(real_c))
        out["num_fake"].append(len(fake_c))
    return out


def compute_all(
    real_feats: Features,
    real_labels: Features,
    fake_feats: Features,
    fake_logits: Features | None,
    fake_labels: Features,
    groups: Mapping[str, Sequence[int]],
    num_classes: int,
    *,
    k: int = 5,
    chunk: int = 10000,
    is_splits: int = 10,
    prd_clusters_per_class: int = 20,
    prd_runs: int = 10,
    prd_kmeans: str = "sklearn",
    seed: int = 0,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    stage: Callable[[str], None] = lambda name: None,
) -> dict[str, Any]:
    """Every score of docs/design.md section 3 for one generated set, plus KID from the same features.
    ``stage(name)`` is called as each score starts (progress lines: some take minutes at paper size).

    Returns ``{fid, kid, kid_std, is_mean, is_std, precision, recall, f_8, f_1_8, per_shot: {group: {fid, kid,
    precision, recall}}}``; ``is_mean`` / ``is_std`` are None when ``fake_logits`` is None (an extractor
    without logits). KID is unbiased, so unlike FID it can be compared across the groups' unequal sizes.
    """
    if fake_logits is not None:
        stage("Inception Score")
    is_mean, is_std = (None, None) if fake_logits is None else inception_score(fake_logits, is_splits)
    stage(f"precision / recall (k={k})")
    pr = precision_recall(real_feats, fake_feats, k=k, chunk=chunk)
    stage(f"F_8 / F_1/8 ({prd_runs} k-means runs of {prd_clusters_per_class * num_classes} clusters)")
    f_8, f_1_8 = prd_f_beta(
        real_feats,
        fake_feats,
        num_clusters=prd_clusters_per_class * num_classes,
        num_runs=prd_runs,
        seed=seed,
        kmeans=prd_kmeans,
    )

    def kid(real_g: Features, fake_g: Features) -> tuple[float, float | None]:
        return kernel_inception_distance(real_g, fake_g, kid_subsets, kid_subset_size, seed)

    def shot_scores(real_g: Tensor, fake_g: Tensor) -> dict[str, float]:
        return {
            "fid": fid_from_features(real_g, fake_g),
            "kid": kid(real_g, fake_g)[0],
            **precision_recall(real_g, fake_g, k=k, chunk=chunk),
        }

    stage(f"KID ({kid_subsets} subsets)")
    kid_mean, kid_std = kid(real_feats, fake_feats)
    stage("FID")
    fid = fid_from_features(real_feats, fake_feats)
    stage(f"per-shot FID, KID, precision / recall ({', '.join(groups)})")
    return {
        "fid": fid,
        "kid": kid_mean,
        "kid_std": kid_std,
        "is_mean": is_mean,
        "is_std": is_std,
        "precision": pr["precision"],
        "recall": pr["recall"],
        "f_8": f_8,
        "f_1_8": f_1_8,
        "per_shot": per_group(shot_scores, real_feats, real_labels, fake_feats, fake_labels, groups),
    }
