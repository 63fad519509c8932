"""Evaluation metrics (docs/design.md section 3): Inception features, the reference-feature cache, and the scores,
one module each (fid, kid, isc, prc, prd; ``groups`` per shot group and per class), found and run together by
``suite`` (its registry, ``configure``, ``check_all``, ``compute_all``)."""

from diffrop.evaluation.metrics.base import Context, Metric, Sizes
from diffrop.evaluation.metrics.features import FidHelperFeatures, InceptionFeatures, make_extractor
from diffrop.evaluation.metrics.fid import feature_stats, fid_from_features, frechet_distance
from diffrop.evaluation.metrics.groups import per_class, per_group
from diffrop.evaluation.metrics.isc import inception_score
from diffrop.evaluation.metrics.kid import kernel_inception_distance, mmd2_unbiased
from diffrop.evaluation.metrics.prc import knn_radii, precision_recall
from diffrop.evaluation.metrics.prd import KMEANS_BACKENDS, cluster_labels, prd_f_beta
from diffrop.evaluation.metrics.reference import ReferenceCache, make_key, weights_fingerprint
from diffrop.evaluation.metrics.suite import REGISTRY, check_all, compute_all, configure

__all__ = [
    "KMEANS_BACKENDS",
    "REGISTRY",
    "Context",
    "FidHelperFeatures",
    "InceptionFeatures",
    "Metric",
    "ReferenceCache",
    "Sizes",
    "check_all",
    "cluster_labels",
    "compute_all",
    "configure",
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
