"""The registry of scores and the run of the chosen ones over one generated set (docs/design.md section 3).

Every module of this package that defines ``METRIC`` (a ``base.Metric``) is registered under its name at import;
``load("pkg.module")`` registers one from elsewhere (a plugin, a test: ``eval.metric_modules``). Which scores run,
in which order (the order of their keys in results.json and the console table), and with which settings is the
``eval.metrics`` node of configs/eval.yaml: one block per score, ``eval.metrics.<name>``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from typing import Any

from torch import Tensor

import diffrop.evaluation.metrics as _package
from diffrop.evaluation.metrics.base import Context, Features, Metric, Sizes, as_matrix
from diffrop.evaluation.metrics.groups import per_group
from diffrop.runtime.registry import Registry

REGISTRY = Registry("metric")
register = REGISTRY.register


def load(module: str) -> Metric:
    """Import ``module`` (a dotted name) and register its ``METRIC``."""
    try:
        metric = getattr(importlib.import_module(module), "METRIC", None)
    except ImportError as err:
        raise ValueError(f"eval.metric_modules: cannot import {module!r} ({err})") from err
    if not isinstance(metric, Metric):
        raise ValueError(f"eval.metric_modules: {module!r} defines no METRIC (a diffrop Metric record)")
    return register(metric)


def configure(node: Mapping[str, Mapping[str, Any] | None]) -> dict[str, Any]:
    """``eval.metrics`` -> {name: that metric's settings object}, in the node's order."""
    out = {}
    for name, values in node.items():
        if name not in REGISTRY:
            raise ValueError(
                f"eval.metrics.{name} names no metric; registered: {list(REGISTRY)} "
                "(eval.metric_modules=[pkg.module] registers one defined elsewhere)"
            )
        settings, values = REGISTRY[name].settings, dict(values or {})
        known = [f.name for f in fields(settings)]
        if unknown := sorted(set(values) - set(known)):
            raise ValueError(f"eval.metrics.{name} has no setting {unknown[0]!r}; its settings: {known}")
        if missing := [k for k in known if k not in values]:
            raise ValueError(
                f"eval.metrics.{name}.{missing[0]} is not set (configs/eval.yaml holds its default)"
            )
        out[name] = settings(**values)
    return out


def check_all(settings: Mapping[str, Any], sizes: Sizes) -> None:
    """Each chosen metric's own checks of the set sizes (before any sampling)."""
    for name, s in settings.items():
        if (check := REGISTRY[name].check) is not None:
            check(s, sizes)


def compute_all(
    real_feats: Features,
    real_labels: Features,
    fake_feats: Features,
    fake_logits: Features | None,
    fake_labels: Features,
    groups: Mapping[str, Sequence[int]],
    settings: Mapping[str, Any],
    context: Context,
    stage: Callable[[str], None] = lambda name: None,
) -> dict[str, Any]:
    """The scores of ``settings`` (``configure``'s output) on the whole set, then ``per_shot: {group: {...}}`` of
    their ``per_shot`` keys. ``stage(name)`` is called as each score starts (some take minutes at paper size).
    A score that needs logits gives None for its keys when ``fake_logits`` is None (an extractor without logits).
    """
    real, fake = as_matrix(real_feats), as_matrix(fake_feats)
    logits = None if fake_logits is None else as_matrix(fake_logits)
    chosen = [(REGISTRY[name], s) for name, s in settings.items()]
    out: dict[str, Any] = {}
    for metric, s in chosen:
        if metric.needs_logits and logits is None:
            out |= dict.fromkeys(metric.keys)
            continue
        detail = metric.detail(s, context.num_classes) if metric.detail else None
        stage(metric.title if detail is None else f"{metric.title} ({detail})")
        out |= metric.score(real, fake, logits, s, context)
    per_shot = [(metric, s) for metric, s in chosen if metric.per_shot]

    def shot_scores(real_g: Tensor, fake_g: Tensor) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for metric, s in per_shot:
            scores = metric.score(real_g, fake_g, None, s, context)
            values |= {key: scores[key] for key in metric.per_shot}
        return values

    if per_shot:
        stage(f"per-shot {', '.join(m.title for m, _ in per_shot)} ({', '.join(groups)})")
        out["per_shot"] = per_group(shot_scores, real, real_labels, fake, fake_labels, groups)
    return out


REGISTRY.discover(_package.__name__, "METRIC")
