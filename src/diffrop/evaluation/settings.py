"""The ``eval`` config node as one object, checked before any slow work (configs/eval.yaml documents each key and
holds its one default). Each score's settings are its own node, ``eval.metrics.<name>``, built by its ``Metric``
(``metrics.suite.configure``); what needs the data or the sampler is checked by ``pipeline.Evaluator``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from diffrop.evaluation.metrics import suite
from diffrop.evaluation.metrics.features import EXTRACTORS

# eval.<old key> -> its key since each metric owns its settings (issue 29); typing an old one is a one-line error
MOVED = {
    "k": "metrics.precision_recall.k",
    "is_splits": "metrics.inception_score.splits",
    "prd_clusters_per_class": "metrics.prd.clusters_per_class",
    "prd_runs": "metrics.prd.runs",
    "kmeans": "metrics.prd.kmeans",
    "kid_subsets": "metrics.kid.subsets",
    "kid_subset_size": "metrics.kid.subset_size",
}


def moved_setting(overrides: Iterable[str]) -> str | None:
    """The error for the first override that names a setting by its old key (``eval.k=3``), else None."""
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key.startswith("eval.") and key[5:] in MOVED:
            new = f"eval.{MOVED[key[5:]]}"
            return f"{key} is now {new} (each metric's settings are its eval.metrics.<name> node): pass {new}={value or '<value>'}"
    return None


@dataclass(frozen=True)
class EvalSettings:
    """The whole ``eval`` node; ``metrics`` holds each chosen score's settings object, in the node's order."""

    num_samples: int
    seed: int  # sample k has seed seed + k; also the seed of every seeded draw in a score
    shard_size: int
    extractor: str  # EXTRACTORS
    inception_weights: str | None  # local weights file; None lets the library download (needs network)
    feature_batch_size: int
    reference_cache: str  # folder of the reference-feature cache (metrics.ReferenceCache)
    reference_per_class: int | None  # cap the reference set (first n of each class); None = all
    guidance_sweep: list[float] | None  # one evaluation per w, the best FID kept (paper Fig. 4b)
    classifier_ckpt: str | None  # generated-sample accuracy (``classification.load_classifier``)
    grid_per_class: int
    per_class_fid_min_samples: int
    overwrite: bool  # delete samples drawn with other settings instead of refusing
    progress: bool
    metric_modules: list[
        str
    ]  # modules outside evaluation/metrics/ whose METRIC is registered (a plugin, a test)
    metrics: dict[str, Any]  # eval.metrics.<name> -> that metric's settings object

    @classmethod
    def from_node(cls, node: Mapping[str, Any]) -> EvalSettings:
        """The resolved ``eval`` node (plain containers) -> settings, its metric modules registered first."""
        if moved := moved_setting(f"eval.{key}={value}" for key, value in node.items()):
            raise ValueError(moved)
        for module in node["metric_modules"]:
            suite.load(module)
        return cls(**{**node, "metrics": suite.configure(node["metrics"])})

    def __post_init__(self) -> None:
        for name in ("num_samples", "shard_size", "feature_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"eval.{name} must be > 0, got {getattr(self, name)}")
        if self.grid_per_class < 0:
            raise ValueError(f"eval.grid_per_class must be >= 0, got {self.grid_per_class}")
        if self.reference_per_class is not None and self.reference_per_class <= 0:
            raise ValueError(f"eval.reference_per_class must be > 0 or null, got {self.reference_per_class}")
        if "fid" not in self.metrics:  # the best w of a sweep, results.json readers and the tables read it
            raise ValueError(
                "eval.metrics.fid cannot be skipped: the guidance sweep and the paper tables read FID"
            )
        if self.extractor not in EXTRACTORS:
            raise ValueError(f"eval.extractor={self.extractor!r} is not one of {sorted(EXTRACTORS)}")
