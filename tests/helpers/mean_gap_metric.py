"""A throw-away metric from outside the package, for tests/test_eval.py: the distance between the two sets' mean
features times a setting. All a new metric needs is this module and its block under ``eval.metrics``."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from diffrop.evaluation.metrics.base import Context, Metric


@dataclass(frozen=True)
class Settings:
    scale: float


def _score(real: Tensor, fake: Tensor, logits: Tensor | None, s: Settings, c: Context) -> dict:
    return {"mean_gap": s.scale * float((fake.double().mean(0) - real.double().mean(0)).norm())}


METRIC = Metric("mean_gap", "mean gap", ("mean_gap",), _score, Settings, per_shot=("mean_gap",))
