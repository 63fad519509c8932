"""Long-tail subsets and shot groups, exactly as the CBDM / LDAM code builds CIFAR-LT (docs/design.md section 2)."""

from __future__ import annotations

import math

import numpy as np


def longtail_counts(n_max: int, num_classes: int, imb_factor: float) -> list[int]:
    """n_c = int(n_max * imb ** (c / (C - 1))): class 0 keeps n_max, class C-1 keeps n_max * imb."""
    if not (math.isfinite(imb_factor) and 0 < imb_factor <= 1):
        raise ValueError(f"data.imb_factor must be in (0, 1] (e.g. 0.01 for CIFAR-LT), got {imb_factor!r}")
    if num_classes == 1:
        return [int(n_max)]
    return [int(n_max * imb_factor ** (c / (num_classes - 1))) for c in range(num_classes)]


def select_longtail(labels: np.ndarray, counts: list[int], seed: int = 0) -> np.ndarray:
    """Indices of the long-tail subset: NumPy seeded once, then per class in label order shuffle and keep n_c.

    Same random stream as the reference code's ``np.random.seed(0)`` + ``np.random.shuffle``; a class with fewer
    images than n_c keeps all it has.
    """
    rng = np.random.RandomState(seed)
    keep = []
    for c, n_c in enumerate(counts):
        idx = np.where(labels == c)[0]
        rng.shuffle(idx)
        keep.append(idx[:n_c])
    return np.concatenate(keep)


def shot_groups(class_counts: list[int]) -> dict[str, list[int]]:
    """many / med / few by training count (ties by label): C // 3 classes each for many and few, the rest med.

    Gives 3/4/3 for 10 classes and 33/34/33 for 100, as the paper's Table 2.
    """
    order = sorted(range(len(class_counts)), key=lambda c: (-class_counts[c], c))
    k = len(order) // 3
    return {
        "many": sorted(order[:k]),
        "med": sorted(order[k : len(order) - k]),
        "few": sorted(order[len(order) - k :]),
    }
