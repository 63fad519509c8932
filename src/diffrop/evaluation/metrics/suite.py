"""Every score of docs/design.md section 3 for one generated set, one module each (torch-fidelity's layout).

A new score is a module with a pure features-to-value function and its ``METRIC`` record (``base.Metric``), plus
its line in ``METRICS`` (and in ``PER_SHOT`` if it is also scored per shot group); its keys then land in
results.json.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor

from diffrop.evaluation.metrics import fid, isc, kid, prc, prd
from diffrop.evaluation.metrics.base import Features, Metric, MetricSettings, as_matrix
from diffrop.evaluation.metrics.groups import per_group

# run in this order, which is also the order of the keys in results.json and the console table (FID first)
METRICS: tuple[Metric, ...] = (fid.METRIC, kid.METRIC, isc.METRIC, prc.METRIC, prd.METRIC)
PER_SHOT: tuple[Metric, ...] = (fid.METRIC, kid.METRIC, prc.METRIC)  # their ``per_shot`` keys, per shot group


def compute_all(
    real_feats: Features,
    real_labels: Features,
    fake_feats: Features,
    fake_logits: Features | None,
    fake_labels: Features,
    groups: Mapping[str, Sequence[int]],
    num_classes: int,
    settings: MetricSettings,
    stage: Callable[[str], None] = lambda name: None,
) -> dict[str, Any]:
    """The scores of ``METRICS`` on the whole set, then ``per_shot: {group: {...}}`` of ``PER_SHOT``.
    ``stage(name)`` is called as each score starts (progress lines: some take minutes at paper size).

    Keys: ``fid, kid, kid_std, is_mean, is_std, precision, recall, f_8, f_1_8, per_shot: {group: {fid, kid,
    precision, recall}}``; ``is_mean`` / ``is_std`` are None when ``fake_logits`` is None (an extractor without
    logits).
    """
    real, fake = as_matrix(real_feats), as_matrix(fake_feats)
    logits = None if fake_logits is None else as_matrix(fake_logits)
    out: dict[str, Any] = {}
    for metric in METRICS:
        if metric.needs_logits and logits is None:
            out |= dict.fromkeys(metric.keys)
            continue
        detail = metric.detail(settings, num_classes) if metric.detail else None
        stage(metric.name if detail is None else f"{metric.name} ({detail})")
        out |= metric.score(real, fake, logits, num_classes, settings)

    def shot_scores(real_g: Tensor, fake_g: Tensor) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for metric in PER_SHOT:
            scores = metric.score(real_g, fake_g, None, num_classes, settings)
            values |= {key: scores[key] for key in metric.per_shot}
        return values

    stage(f"per-shot {', '.join(m.name for m in PER_SHOT)} ({', '.join(groups)})")
    out["per_shot"] = per_group(shot_scores, real, real_labels, fake, fake_labels, groups)
    return out
