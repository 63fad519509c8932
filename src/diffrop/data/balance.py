"""Batch order as a pure function of (seed, global step, rank): resuming at step k replays exactly batch k.

No epoch or iterator state has to be saved: the datamodule starts the sampler at the trainer's restored
global step. ``rs`` / ``sqrt_rs`` are the class-balanced re-sampling baselines of paper Table 1 (class
probability proportional to 1 and to sqrt(n_c)); ``none`` walks a fresh permutation every epoch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import Sampler

BALANCE_MODES = ("none", "rs", "sqrt_rs")


def class_balancing_weights(labels: Tensor, mode: str) -> Tensor | None:
    """Per-sample weights so that class c is drawn with probability proportional to n_c ** power."""
    if mode not in BALANCE_MODES:
        raise ValueError(f"data.balance={mode!r} is not one of {list(BALANCE_MODES)}")
    if mode == "none":
        return None
    counts = torch.bincount(labels).double()
    power = {"rs": 0.0, "sqrt_rs": 0.5}[mode]
    return (counts ** (power - 1))[labels]  # n_c^power spread over the n_c samples of class c


class StepBatchSampler(Sampler[list[int]]):
    """Yields this rank's slice of the global batch for steps start_step, start_step + 1, ... (effectively infinite)."""

    def __init__(
        self,
        num_items: int,
        global_batch_size: int,
        seed: int,
        weights: Tensor | None = None,
        rank: int = 0,
        world_size: int = 1,
        num_steps: int = 10**9,
    ) -> None:
        if global_batch_size % world_size:
            raise ValueError(
                f"data.batch_size={global_batch_size} (global) must be divisible by the number of devices {world_size}"
            )
        if global_batch_size > num_items:
            raise ValueError(f"data.batch_size={global_batch_size} exceeds the {num_items} training images")
        self.num_items, self.global_batch_size, self.seed = num_items, global_batch_size, seed
        self.weights, self.rank, self.world_size, self.num_steps = weights, rank, world_size, num_steps
        self.local = global_batch_size // world_size
        self.steps_per_epoch = num_items // global_batch_size
        self.start_step = 0

    def global_batch(self, step: int) -> Tensor:
        if self.weights is not None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            return torch.multinomial(self.weights, self.global_batch_size, replacement=True, generator=g)
        epoch, i = divmod(step, self.steps_per_epoch)
        if getattr(self, "_epoch", None) != epoch:
            self._epoch = epoch
            self._perm = torch.randperm(
                self.num_items, generator=torch.Generator().manual_seed(self.seed + epoch)
            )
        return self._perm[i * self.global_batch_size : (i + 1) * self.global_batch_size]

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.num_steps):
            batch = self.global_batch(step)
            yield batch[self.rank * self.local : (self.rank + 1) * self.local].tolist()

    def __len__(self) -> int:
        return self.num_steps  # one "epoch" = the whole run, so the progress bar counts training steps
