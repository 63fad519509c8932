"""k-means in torch, on the features' device, for the PRD scores F_8 / F_1/8 (``prd.prd_f_beta``).

Why torch here: scikit-learn's k-means has no GPU path, and at the paper's size (CIFAR-100-LT: 50k + 50k Inception
features of 2048 dims, 20 x 100 = 2,000 clusters, 10 runs) its CPU cost is minutes per run (README, "Speed";
``benchmarks/bench.py --only kmeans --kmeans-sklearn``), while the features already sit on the GPU. It is an
explicit opt-in (``eval.metrics.prd.kmeans=torch``): under the paper protocol its F_8 / F_1/8 sit above the reference code's
mini-batch k-means, so scikit-learn stays the default on every device and tables stay comparable. Matmuls run in full float32 unless TF32 is switched on globally (it is off by default).

The protocol follows scikit-learn's ``MiniBatchKMeans(n_init=10)`` of the reference code (Sajjadi et al. 2018) for
the initialisation: ``n_init`` greedy k-means++ seedings (sklearn's ``_kmeans_plusplus``: 2 + ln k candidates per
centre, the one that lowers the potential most is kept), each on a random subset of ``init_size`` points, the best
by inertia on a random validation subset is kept. Then, instead of mini-batch updates, full-batch Lloyd iterations
(sklearn ``KMeans``' algorithm) until the squared centre shift falls below ``tol`` x the mean feature variance or the
labels stop changing: on a GPU a full pass over 100k x 2,000 x 2,048 is a few milliseconds of matmul.

Memory: distances are computed in row blocks of ``block_elems // k`` rows, so the peak is one [rows, k] block
(64 MiB at the default) plus the features, never the dense [N, k] matrix times D. Centre sums use a one-hot
matmul per block instead of ``index_add_``, whose CUDA kernel uses atomics and is not deterministic: with a seeded
``torch.Generator`` the result is then reproducible on the CPU, and on one GPU as far as cuBLAS is (same device,
same shapes).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MINIBATCH_BATCH_SIZE = 1024  # sklearn MiniBatchKMeans' default batch_size, which sets its init_size


def default_init_size(n: int, k: int) -> int:
    """sklearn ``MiniBatchKMeans``' heuristic: 3 x batch_size, or 3 x k when that is larger than it; at most n."""
    size = 3 * MINIBATCH_BATCH_SIZE
    if size < k:
        size = 3 * k
    return min(size, n)


def _sq_dists(x: Tensor, centres: Tensor, centre_sq: Tensor) -> Tensor:
    """||x - c||^2 for every row pair, [len(x), len(centres)], clamped at 0 against round-off."""
    x_sq = (x * x).sum(1, keepdim=True)
    return (x_sq - 2.0 * (x @ centres.T) + centre_sq[None, :]).clamp_min_(0.0)


def assign(x: Tensor, centres: Tensor, block_elems: int = 2**24) -> tuple[Tensor, Tensor]:
    """(labels [N], squared distance to the assigned centre [N]): nearest centre of every row, block-wise."""
    rows = max(1, block_elems // max(1, len(centres)))
    centre_sq = (centres * centres).sum(1)
    labels, dists = [], []
    for block in x.split(rows):
        d, i = _sq_dists(block, centres, centre_sq).min(1)
        labels.append(i)
        dists.append(d)
    return torch.cat(labels), torch.cat(dists)


def kmeans_plusplus(
    x: Tensor, k: int, generator: torch.Generator, n_local_trials: int | None = None
) -> Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; sklearn ``_kmeans_plusplus``): [k, D] centres."""
    n = x.shape[0]
    trials = 2 + int(math.log(k)) if n_local_trials is None else n_local_trials
    x_sq = (x * x).sum(1)
    first = torch.randint(0, n, (1,), generator=generator, device=x.device)
    centres = [x[first]]
    closest = (x_sq - 2.0 * (x @ x[first].T)[:, 0] + x_sq[first]).clamp_min(0.0)
    for _ in range(1, k):
        cumulative = closest.double().cumsum(0)
        draws = torch.rand(trials, generator=generator, device=x.device, dtype=torch.float64) * cumulative[-1]
        candidates = torch.searchsorted(cumulative, draws).clamp_(max=n - 1)
        cand = x[candidates]
        d = (x_sq[None, :] - 2.0 * (cand @ x.T) + x_sq[candidates][:, None]).clamp_min_(0.0)
        d = torch.minimum(closest[None, :], d)
        best = d.double().sum(1).argmin()  # a tensor: no host sync per centre on a GPU
        closest = d[best]
        centres.append(cand[best][None])
    return torch.cat(centres)


def _centre_sums(x: Tensor, labels: Tensor, k: int, block_elems: int) -> tuple[Tensor, Tensor]:
    """Per-cluster sums [k, D] and counts [k] via block-wise one-hot matmuls (deterministic, unlike index_add_)."""
    rows = max(1, block_elems // k)
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device)
    counts = torch.zeros(k, dtype=torch.float64, device=x.device)
    for block, lab in zip(x.split(rows), labels.split(rows), strict=True):
        one_hot = torch.nn.functional.one_hot(lab, k).to(x.dtype)
        sums += one_hot.T @ block
        counts += one_hot.sum(0, dtype=torch.float64)
    return sums, counts


def kmeans(
    x: Tensor,
    k: int,
    *,
    n_init: int = 10,
    max_iter: int = 100,
    tol: float = 1e-4,
    init_size: int | None = None,
    seed: int = 0,
    block_elems: int = 2**24,
) -> tuple[Tensor, Tensor]:
    """(labels [N] int64, centres [k, D]) of ``x`` [N, D] on ``x``'s device (see the module docstring).

    ``max_iter`` Lloyd iterations at most (sklearn ``MiniBatchKMeans``' default count of passes); ``tol`` as in
    sklearn ``KMeans``: relative to the mean per-dimension variance of ``x``.
    """
    if x.ndim != 2 or not 1 <= k <= x.shape[0]:
        raise ValueError(f"need x of shape [N, D] and 1 <= k <= N, got shape {tuple(x.shape)} and k={k}")
    if not x.is_floating_point():
        x = x.float()
    n = x.shape[0]
    gen = torch.Generator(device=x.device).manual_seed(seed)
    size = default_init_size(n, k) if init_size is None else min(max(init_size, k), n)

    # seeding: n_init k-means++ runs on random subsets, the best by inertia on a validation subset (MiniBatchKMeans)
    valid = x[torch.randint(0, n, (size,), generator=gen, device=x.device)]
    best, best_inertia = None, math.inf
    for _ in range(n_init):
        subset = x[torch.randint(0, n, (size,), generator=gen, device=x.device)]
        centres = kmeans_plusplus(subset, k, gen)
        inertia = float(assign(valid, centres, block_elems)[1].double().sum())
        if inertia < best_inertia:
            best, best_inertia = centres, inertia
    centres = best

    # Lloyd iterations (sklearn KMeans' stopping rule: squared centre shift <= tol * mean variance, or fixed labels)
    threshold = tol * float(x.double().var(0, unbiased=False).mean())
    labels = None
    for _ in range(max_iter):
        new_labels, dists = assign(x, centres, block_elems)
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels
        sums, counts = _centre_sums(x, labels, k, block_elems)
        new_centres = sums / counts.clamp_min(1).to(x.dtype)[:, None]
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):  # relocate empty clusters to the points farthest from their centres (as sklearn does)
            far = dists.topk(len(empty)).indices
            new_centres[empty] = x[far]
        shift = float(((new_centres - centres) ** 2).sum())
        centres = new_centres
        if shift <= threshold:
            break
    labels = assign(x, centres, block_elems)[0]
    return labels, centres
