"""Section kmeans: one PRD k-means run of F_8 / F_1/8, torch on the device (and the reference's sklearn)."""

from __future__ import annotations

import time

import torch

from benchmarks.timing import CUDA, timed


def mixture_features(n: int, dim: int = 2048, modes: int = 100, seed: int = 0) -> torch.Tensor:
    """n rows of a Gaussian mixture (``modes`` equal modes, within-mode spread as large as the spread of the means):
    a stand-in for Inception features that has cluster structure, unlike plain noise, so k-means converges as on
    real features rather than wandering."""
    g = torch.Generator().manual_seed(seed)
    centres = 0.5 * torch.randn(modes, dim, generator=g)
    return centres[torch.randint(0, modes, (n,), generator=g)] + 0.5 * torch.randn(n, dim, generator=g)


def bench_kmeans(args) -> list[dict]:
    """One PRD k-means run (F_8 / F_1/8 do ``eval.prd_runs`` = 10 of them) on ``--kmeans-n`` x 2048 features into
    ``--kmeans-k`` clusters (paper size: 100000 = 50k generated + 50k reference, 20 x 100 = 2000): torch on the
    device, and with ``--kmeans-sklearn`` the reference code's sklearn ``MiniBatchKMeans(n_init=10)`` (CPU)."""
    from diffrop.evaluation.metrics import cluster_labels

    x = mixture_features(args.kmeans_n)
    backends = ["torch", *(["sklearn"] if args.kmeans_sklearn else [])]
    rows = []
    for backend in backends:
        feats = x.to("cuda" if CUDA and backend == "torch" else "cpu")
        t_cpu = time.process_time()
        sec = timed(lambda f=feats, b=backend: cluster_labels(f, args.kmeans_k, seed=0, kmeans=b))
        rows.append(
            {
                "what": f"PRD k-means, 1 run ({backend})",
                "device": str(feats.device),
                "n": args.kmeans_n,
                "k": args.kmeans_k,
                "seconds": sec,
                "cpu_seconds": time.process_time() - t_cpu,
            }
        )
    return rows
