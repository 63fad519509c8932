"""The two names ``benchmarks/`` still import from here (KID timing, PRD k-means timing); every score lives in its
own module now (``diffrop.evaluation.metrics``). Delete this file once the benchmarks import from the package."""

from diffrop.evaluation.metrics.kid import kernel_inception_distance
from diffrop.evaluation.metrics.prd import cluster_labels

__all__ = ["cluster_labels", "kernel_inception_distance"]
