"""What every score module shares: the feature-matrix input and the ``Metric`` record through which
``suite.compute_all`` runs a score (one module per score, torch-fidelity's layout).

A metric declares its settings (a frozen dataclass whose fields are the keys of its ``eval.metrics.<name>`` node in
configs/eval.yaml, where their one default lives), the checks its settings put on the set sizes (``check(settings,
sizes)``, run before any sampling), and its result keys (``keys``; ``per_shot`` those also scored per shot group,
which become the per-shot columns of results.json and the W&B table).

Convention throughout: ``real`` is the reference set (the balanced training set), ``fake`` the generated set.
Inputs may be torch tensors (any device: the heavy parts run where the features are) or NumPy arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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


def positive(node: str, **values: int) -> None:
    """Raise the one-line error for the first value of ``eval.metrics.<node>`` that is not > 0."""
    for key, value in values.items():
        if value <= 0:
            raise ValueError(f"eval.metrics.{node}.{key} must be > 0, got {value}")


@dataclass(frozen=True)
class NoSettings:
    """The settings of a metric without any (its node is ``{}``)."""


@dataclass(frozen=True)
class Context:
    """What a score reads besides its own settings."""

    num_classes: int
    seed: int  # eval.seed: of every seeded draw in a score (KID subsets, PRD subsampling and k-means)


@dataclass(frozen=True)
class Sizes:
    """The set sizes an evaluation will score, known before any sampling: what a metric's ``check`` reads."""

    generated: int
    reference: int
    num_classes: int
    groups: Mapping[str, tuple[int, int]]  # shot group -> (generated, reference) samples of its classes

    @classmethod
    def of(
        cls, labels: Tensor, real_labels: Tensor, groups: Mapping[str, Sequence[int]], num_classes: int
    ) -> Sizes:
        """The sizes of a generated set with ``labels`` and a reference set with ``real_labels``."""

        def count(y: Tensor, classes: Sequence[int]) -> int:
            return int(torch.isin(y, torch.as_tensor(list(classes), dtype=y.dtype)).sum())

        per_group = {g: (count(labels, c), count(real_labels, c)) for g, c in groups.items()}
        num_classes = 1 + max(
            c for members in groups.values() for c in members
        )  # the groups cover every class
        return cls(len(labels), len(real_labels), num_classes, per_group)


Score = Callable[[Tensor, Tensor, "Tensor | None", Any, Context], dict[str, Any]]


@dataclass(frozen=True)
class Metric:
    """One score: ``score(real, fake, fake_logits, settings, context)`` returns ``keys``.

    ``name`` is its settings node (``eval.metrics.<name>``, built into ``settings``); ``check(settings, sizes)``
    raises a one-line ``ValueError`` when the sizes cannot support the score; ``title`` and ``detail(settings,
    num_classes)`` make the progress line shown as it starts; ``per_shot`` are the keys also scored within each shot
    group (paper Table 2); a score that ``needs_logits`` is None without them (an extractor with no classifier head).
    """

    name: str
    title: str
    keys: tuple[str, ...]
    score: Score
    settings: type = NoSettings
    check: Callable[[Any, Sizes], None] | None = None
    detail: Callable[[Any, int], str] | None = None
    per_shot: tuple[str, ...] = ()
    needs_logits: bool = False
