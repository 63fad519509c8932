"""On-disk cache of reference-set features (docs/design.md section 3: reference = the full, balanced training set).

One pass of the Inception network over the 50k training images is stored with its labels, so the
full-set statistics and every per-shot class subset (paper Table 2) come from the same file. Files are
written to a temporary name in the same folder and renamed with ``os.replace``, so a crash or a
concurrent writer never leaves a half-written file under the final name.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diffrop.evaluation.metrics.fid import feature_stats
from diffrop.runtime.atomic_write import atomic_write


def weights_fingerprint(weights_path: str | Path | None, length: int = 12) -> str:
    """Short sha256 of a weights file ('default' for a library's own download), for cache keys."""
    if weights_path is None:
        return "default"
    digest = hashlib.sha256()
    with open(weights_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def make_key(dataset: str, extractor: str, weights_path: str | Path | None = None) -> str:
    """Cache key of one (dataset, extractor, weights) triple, e.g. 'cifar10-train-inception-v3-compat-3f2a..'."""
    return f"{dataset}-{extractor}-{weights_fingerprint(weights_path)}"


class ReferenceCache:
    """Features [N, D] and labels [N] of reference sets, one ``.pt`` file per key under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._stats: dict[tuple[str, tuple[int, ...] | None], tuple[np.ndarray, np.ndarray]] = {}

    def path(self, key: str) -> Path:
        """File of ``key``: a readable slug plus a hash of the exact key, so distinct keys never collide."""
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:80]
        return self.root / f"{slug}-{hashlib.sha1(key.encode()).hexdigest()[:8]}.pt"

    def load(self, key: str) -> tuple[Tensor, Tensor] | None:
        """(features, labels) on the CPU, or None when ``key`` was never stored."""
        path = self.path(key)
        if not path.is_file():
            return None
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("key") != key:
            raise ValueError(
                f"{path} holds key {blob.get('key')!r}, not {key!r}; delete the file to recompute it"
            )
        return blob["features"], blob["labels"]

    def save(self, key: str, features: Tensor, labels: Tensor) -> Path:
        """Store atomically: write a temporary file in ``root``, then ``os.replace`` it onto the final name."""
        features, labels = (
            torch.as_tensor(features).detach().cpu(),
            torch.as_tensor(labels).detach().cpu().long(),
        )
        if features.ndim != 2 or labels.shape != (features.shape[0],):
            raise ValueError(
                f"need features [N, D] and labels [N], got {tuple(features.shape)} and {tuple(labels.shape)}"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        with atomic_write(path) as f:
            torch.save({"key": key, "features": features, "labels": labels}, f)
        return path

    def get_or_compute(
        self, key: str, compute_fn: Callable[[], tuple[Tensor, Tensor]]
    ) -> tuple[Tensor, Tensor]:
        """Stored (features, labels) of ``key``; on a miss call ``compute_fn()`` once and store its result."""
        cached = self.load(key)
        if cached is not None:
            return cached
        features, labels = compute_fn()
        self.save(key, features, labels)
        loaded = self.load(key)
        assert loaded is not None
        return loaded

    def stats(self, key: str, classes: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """FID statistics (mu, sigma) of the stored set, or of the rows whose label is in ``classes``
        (per-shot FID against the same classes of the training data, paper Table 2). Memoised."""
        memo_key = (key, None if classes is None else tuple(sorted(int(c) for c in classes)))
        if memo_key not in self._stats:
            cached = self.load(key)
            if cached is None:
                raise KeyError(
                    f"no reference features stored for {key!r} under {self.root}; run get_or_compute first"
                )
            features, labels = cached
            if classes is not None:
                features = features[torch.isin(labels, torch.as_tensor(memo_key[1], dtype=labels.dtype))]
                if len(features) < 2:
                    raise ValueError(
                        f"classes {list(classes)} select {len(features)} rows of {key!r}; need >= 2"
                    )
            self._stats[memo_key] = feature_stats(features)
        return self._stats[memo_key]
