"""Evaluation metrics (docs/design.md section 3): Inception features, FID / KID / IS / precision-recall / PRD scores,
and the reference-feature cache."""

from diffrop.evaluation.metrics.features import FidHelperFeatures, InceptionFeatures, make_extractor
from diffrop.evaluation.metrics.reference import ReferenceCache, make_key, weights_fingerprint
from diffrop.evaluation.metrics.scores import (
    compute_all,
    feature_stats,
    fid_from_features,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    knn_radii,
    mmd2_unbiased,
    per_class,
    per_group,
    prd_f_beta,
    precision_recall,
)

__all__ = [
    "FidHelperFeatures",
    "InceptionFeatures",
    "ReferenceCache",
    "compute_all",
    "feature_stats",
    "fid_from_features",
    "frechet_distance",
    "inception_score",
    "kernel_inception_distance",
    "knn_radii",
    "make_extractor",
    "make_key",
    "mmd2_unbiased",
    "per_class",
    "per_group",
    "prd_f_beta",
    "precision_recall",
    "weights_fingerprint",
]
