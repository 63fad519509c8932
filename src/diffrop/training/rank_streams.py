"""The seeding rule of training, on one process or many (docs/design.md section 7).

- Initial weights: ``L.seed_everything(seed)`` before the module is built, so every rank starts from the same
  weights (DDP also broadcasts rank 0's).
- Every random draw of training step k on rank r (t, eps, the label drop, PCL's partner, flips, DiffAugment,
  dropout) comes from the global generators (torch on the CPU and every GPU, Python's ``random``, NumPy) seeded at
  the start of that step from (seed, r, k) through NumPy's ``SeedSequence``. Ranks draw independently, as one
  process drawing the whole global batch would; before this rule every rank drew the same t and eps for the same
  batch position, so W GPUs made W times fewer independent draws.
- The data order is the batch sampler's (``diffrop.data.balance.StepBatchSampler``): a function of the data seed,
  the step, the rank and the world size.

So a run is a pure function of its seed and world size, and resuming is exact with nothing to gather from the
ranks: step k's streams follow from the checkpoint's step. A run resumed with another world size re-derives the
streams of its ranks (a different but equally valid continuation) and says so in one line.
"""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

STREAMS = ("per_rank", "shared")


def seed_step(seed: int, rank: int, step: int) -> None:
    """Seed torch (CPU and every GPU), ``random`` and NumPy for step ``step`` of rank ``rank``: host work only."""
    words = np.random.SeedSequence([seed, rank, step]).generate_state(2, np.uint32)
    value = int(words[0]) << 32 | int(words[1])
    torch.default_generator.manual_seed(value)  # torch.manual_seed also visits MPS, XPU, ...: 100x slower
    if (
        torch.cuda.is_initialized()
    ):  # else no GPU draws anything (and a deferred seed would cost a stack trace)
        torch.cuda.manual_seed_all(value)
    random.seed(value)
    np.random.seed(int(words[0]))


class RankStreams(L.Callback):
    """Seeds every training step's draws from (seed, rank, step): at the start of training (fresh or resumed) and
    after every optimizer step, i.e. before the next batch is moved to the device and augmented there.

    ``streams``: ``per_rank`` (the rule above) or ``shared`` (every rank draws rank 0's stream: the behaviour
    before per-rank streams, kept only so that ``experiments/ddp_streams.py`` can measure what it cost).
    """

    def __init__(self, seed: int, streams: str) -> None:
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(
                f"seed must be an integer >= 0 (it seeds every rank's random streams), got {seed!r}"
            )
        if streams not in STREAMS:
            raise ValueError(f"callbacks.rank_streams.streams={streams!r} is not one of {list(STREAMS)}")
        self.seed, self.streams = seed, streams
        self._stored: dict | None = None  # the streams of the checkpoint this fit resumes, when it has any
        self._world_size = 1

    def _seed(self, trainer: L.Trainer) -> None:
        rank = trainer.global_rank if self.streams == "per_rank" else 0
        seed_step(self.seed, rank, trainer.global_step)

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if (
            trainer.accumulate_grad_batches != 1
        ):  # the streams and the batch order both advance per optimizer step
            raise ValueError(
                f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches} is not supported: raise "
                "data.batch_size (it is the global batch) or add devices instead"
            )
        if trainer.ckpt_path and trainer.global_step > 0:
            self._note_resume(trainer.global_step, trainer.world_size)
        self._seed(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args) -> None:
        self._seed(trainer)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "streams": self.streams, "world_size": self._world_size}

    def load_state_dict(self, state: dict) -> None:
        self._stored = dict(state)

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        self._world_size = trainer.world_size

    def _note_resume(self, step: int, world_size: int) -> None:
        stored = self._stored
        if stored is None:
            rank_zero_info(
                f"note: the checkpoint predates per-rank random streams; from step {step} on every rank draws "
                f"from (seed, rank, step) (docs/design.md section 7)"
            )
        elif stored["world_size"] != world_size:
            rank_zero_info(
                f"note: the checkpoint was written by {stored['world_size']} ranks and resumes on {world_size}: "
                f"the random streams from step {step} on are re-derived for {world_size} ranks (a different but "
                "equally valid continuation; the same world size continues exactly)"
            )
