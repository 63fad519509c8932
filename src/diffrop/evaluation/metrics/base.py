"""What every score module shares: the feature-matrix input, the settings the scores read, and the ``Metric``
record through which ``suite.compute_all`` runs a score (one module per score, torch-fidelity's layout).

Convention throughout: ``real`` is the reference set (the balanced training set), ``fake`` the generated set.
Inputs may be torch tensors (any device: the heavy parts run where the features are) or NumPy arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

Features = Tensor | np.ndarray


def as_matrix(x: Features, dtype: torch.dtype | None = None) -> Tensor:
    """``x`` as a [N, D] tensor (on its own device; NumPy arrays on the CPU), optionally cast to ``dtype``."""
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2:
        raise ValueError(f"expected a feature matrix of shape [N, D], got shape {tuple(t.shape)}")
    return t if dtype is None else t.to(dtype)


@dataclass(frozen=True)
class MetricSettings:
    """The ``eval.*`` values the scores read (configs/eval.yaml documents each; no defaults here: the YAML has them)."""

    k: int  # improved precision / recall neighbourhood
    is_splits: int
    prd_clusters_per_class: int  # F_8 / F_1/8: k-means into this x C clusters
    prd_runs: int
    kmeans: str  # prd.KMEANS_BACKENDS
    kid_subsets: int
    kid_subset_size: int
    seed: int  # of every seeded draw in a score (KID subsets, PRD subsampling and k-means)


Score = Callable[[Tensor, Tensor, "Tensor | None", int, MetricSettings], dict[str, Any]]


@dataclass(frozen=True)
class Metric:
    """One score of the suite: ``score(real, fake, fake_logits, num_classes, settings)`` returns ``keys``.

    ``name`` and ``detail(settings, num_classes)`` make the progress line shown as it starts; ``per_shot`` are the
    keys also scored within each shot group (paper Table 2); a score that ``needs_logits`` is None without them (an
    extractor with no classifier head).
    """

    name: str
    keys: tuple[str, ...]
    score: Score
    detail: Callable[[MetricSettings, int], str] | None = None
    per_shot: tuple[str, ...] = ()
    needs_logits: bool = False
