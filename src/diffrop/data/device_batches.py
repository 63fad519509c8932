"""Batches gathered on the device from a resident copy of the training set (``data.on_device``).

CIFAR-10 is 50k x 3 x 32 x 32 uint8 = 154 MB: it fits on any GPU, and indexing it there removes DataLoader
workers, per-item collation, pinning and the host-to-device copy of every batch. The batch order is the same
``StepBatchSampler`` walk, so a run yields identical batches (and resumes identically) with or without it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from diffrop.data.balance import StepBatchSampler

MAX_BYTES = 2 * 1024**3  # "auto" keeps larger image sets in host memory


class DeviceBatches:
    """An iterable of ``(images uint8 [B, C, H, W], labels [B])`` on ``device``, one per training step."""

    def __init__(
        self, images: Tensor, labels: Tensor, sampler: StepBatchSampler, device: torch.device
    ) -> None:
        self.images, self.labels = images.to(device), labels.to(device)
        self.batch_sampler, self.device = sampler, device

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        s = self.batch_sampler
        for step in range(s.start_step, s.num_steps):
            index = s.global_batch(step)[s.rank * s.local : (s.rank + 1) * s.local]
            index = index.to(self.device, non_blocking=True)  # ~1 KB of indices, no device sync
            yield self.images[index], self.labels[index]

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def state_dict(self) -> dict:  # resumable like the DataLoader path: the position is the global step
        return {"start_step": self.batch_sampler.start_step}

    def load_state_dict(self, state_dict: dict) -> None:
        pass


def use_device_batches(on_device: bool | str, images: Tensor, num_workers: int) -> bool:
    """``auto``: on when the uint8 images fit in ``MAX_BYTES`` and no workers were asked for."""
    if on_device not in (True, False, "auto"):
        raise ValueError(f"data.on_device must be true, false or auto, got {on_device!r}")
    if on_device == "auto":
        return num_workers == 0 and images.numel() * images.element_size() <= MAX_BYTES
    return bool(on_device)
