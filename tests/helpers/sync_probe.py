"""Test-only Lightning callback: records every read of a tensor's value by the host during training (the calls
that make the host wait for a GPU), by global step and with the code that made it.

Used as `+callbacks.sync_probe._target_=tests.helpers.sync_probe.SyncProbe +callbacks.sync_probe.out=<file>`.
On a CPU nothing waits, but the same calls on CUDA block the host until the GPU has caught up, so counting them
on the CPU shows where a GPU run would stall. Reads inside the DataLoader are not counted: its batch sampler draws
indices from CPU tensors on purpose (with workers, in other processes).
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import lightning as L
import torch

# Tensor methods that copy a value to the host (CUDA: a device-to-host copy that waits for the stream) or test
# one for truth.
HOST_READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


class SyncProbe(L.Callback):
    """Writes ``{global step: ["<method> <file:line> < <caller> < <caller>", ...]}`` to ``out`` at the end."""

    def __init__(self, out: str) -> None:
        self.out, self.reads, self.originals = Path(out), {}, {}

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        for name in HOST_READS:
            original = self.originals[name] = getattr(torch.Tensor, name)

            def read(tensor, *args, _original=original, _name=name, **kwargs):
                stack = traceback.extract_stack()[:-1]
                # index sampling in the DataLoader: host tensors by design
                if any("torch/utils/data/" in f.filename for f in stack):
                    return _original(tensor, *args, **kwargs)
                frames = stack[-3:][::-1]  # the caller first
                where = " < ".join(f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in frames)
                self.reads.setdefault(trainer.global_step, []).append(f"{_name} {where}")
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, read)

    def _restore(self) -> None:
        for name, original in self.originals.items():
            setattr(torch.Tensor, name, original)
        self.originals = {}

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._restore()
        self.out.write_text(json.dumps(self.reads, indent=1))
