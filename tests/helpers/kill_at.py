"""A test-only callback that SIGKILLs its own training process at a chosen moment (tests/test_resume.py).

Add it with ``+callbacks.kill_at._target_=tests.helpers.kill_at.KillAt`` in a process started with
``train_utils.child_env()`` (which makes it importable); the moment comes from the
environment, ``DIFFROP_KILL_AT=<where>:<global step>``, so every run of a test is the same command line:

- ``step``: right after the optimizer step of that step, before its periodic checkpoint is written;
- ``save``: in the middle of writing that step's checkpoint (half of the bytes are in the temporary file);
- ``grid``: as the sample grid of that step starts drawing.

Unset, it does nothing.
"""

from __future__ import annotations

import io
import os
import signal

import lightning as L
import torch

import diffrop.training.callbacks
import diffrop.training.checkpoint_io
from diffrop.runtime.atomic_write import atomic_write


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillAt(L.Callback):
    def __init__(self) -> None:
        plan = os.environ.get("DIFFROP_KILL_AT")
        self.where, self.step = (plan.split(":")[0], int(plan.split(":")[1])) if plan else (None, -1)
        if self.where not in (None, "step", "save", "grid"):
            raise ValueError(f"DIFFROP_KILL_AT={plan!r}: where must be step, save or grid")

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        if self.where == "save":
            save = diffrop.training.checkpoint_io.atomic_save

            def half_then_die(obj, path):
                if trainer.global_step != self.step:
                    return save(obj, path)
                buffer = io.BytesIO()
                torch.save(obj, buffer)
                with atomic_write(path) as f:
                    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                    f.flush()
                    die()

            diffrop.training.checkpoint_io.atomic_save = (
                half_then_die  # AtomicCheckpointIO looks it up at each save
            )
        if self.where == "grid":
            sample = diffrop.training.callbacks.sample

            def die_in_grid(*args, **kwargs):
                if trainer.global_step == self.step:
                    die()
                return sample(*args, **kwargs)

            diffrop.training.callbacks.sample = die_in_grid  # SampleGrid.draw looks it up at each grid

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.where == "step" and trainer.global_step == self.step:  # before ModelCheckpoint (always last)
            die()
