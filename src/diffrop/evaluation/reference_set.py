"""The FID reference: the balanced full training set, its Inception features computed once per key and cached
(docs/design.md section 3). Shared by src/eval.py and the training-time FID (``training.periodic_fid``)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import Tensor

from diffrop.data.datamodule import LongTailDataModule
from diffrop.evaluation.metrics import ReferenceCache, make_extractor, make_key
from diffrop.evaluation.metrics.features import FidHelperFeatures, InceptionFeatures
from diffrop.runtime.progress import ticking

Extractor = InceptionFeatures | FidHelperFeatures


def build_extractor(kind: str, weights_path: str | Path | None, device: str | torch.device) -> Extractor:
    """The Inception extractor (tests swap this function for a fake one); a failure is an
    ``InceptionWeightsError`` naming the offline routes."""
    return make_extractor(kind, weights_path, device)


def reference_images(datamodule: LongTailDataModule, per_class: int | None) -> tuple[Tensor, Tensor]:
    """The balanced full training set (FID reference), optionally the first ``per_class`` images of each class."""
    full = datamodule.full_train_set()
    images, labels = full.images, full.labels
    if per_class is not None:
        keep = (
            torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in labels.unique()])
            .sort()
            .values
        )
        images, labels = images[keep], labels[keep]
    return images, labels


def reference_key(
    datamodule: LongTailDataModule, labels: Tensor, per_class: int | None, extractor: Extractor
) -> str:
    """Cache key: dataset, image size, class subset (all C classes or a per-class cap, and the set size), extractor
    and the weights file's fingerprint."""
    classes = f"c{datamodule.num_classes}" + ("" if per_class is None else f"x{per_class}")
    dataset = f"{datamodule.name}-{datamodule.source}-full-{datamodule.image_size}px-{classes}-n{len(labels)}"
    return make_key(dataset, extractor.name, getattr(extractor, "weights_path", None))


def rgb(images: Tensor) -> Tensor:
    """Grey images [N, 1, H, W] repeated to 3 channels for Inception."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def reference_features(
    datamodule: LongTailDataModule,
    extractor: Extractor,
    cache: ReferenceCache,
    per_class: int | None,
    batch_size: int,
    progress: bool,
) -> tuple[Tensor, Tensor, str]:
    """(features [N, D], labels [N], cache key) of the reference set, computed once per key and stored."""
    images, labels = reference_images(datamodule, per_class)
    key = reference_key(datamodule, labels, per_class, extractor)

    def compute() -> tuple[Tensor, Tensor]:
        x = rgb(images)
        cap = "the whole" if per_class is None else f"at most {per_class} per class of the"
        print(
            f"reference set: {len(x):,} images ({cap} training set of {datamodule.name}, before the long-tail cut); "
            f"computing their "
            f"{extractor.name} features once, then cached in {cache.root} (eval.reference_per_class=<n> caps it)",
            flush=True,
        )
        if len(x) <= 2 * batch_size:  # two batches: nothing to estimate
            return extractor.extract(x, batch_size, progress)[0].cpu(), labels
        warm = extractor.extract(x[:batch_size], batch_size, False)[0].cpu()  # first call: set-up, not timed
        start = time.perf_counter()
        timed = extractor.extract(x[batch_size : 2 * batch_size], batch_size, False)[0].cpu()
        left = len(x) - 2 * batch_size
        print(
            f"  about {_duration((time.perf_counter() - start) / batch_size * left)} for the rest", flush=True
        )
        rest = extractor.extract(x[2 * batch_size :], batch_size, progress)[0].cpu()
        return torch.cat([warm, timed, rest]), labels

    with ticking(lambda: f"reference features ({extractor.name})", enabled=progress):
        features, stored_labels = cache.get_or_compute(key, compute)
    return features, stored_labels, key
