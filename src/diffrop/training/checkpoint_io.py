"""Checkpoint files that are never half-written, and a check that a checkpoint fits the model before resuming.

``AtomicCheckpointIO`` streams ``torch.save`` into a temporary file beside the target, fsyncs it and renames it
over the target with ``os.replace`` (atomic on POSIX; ``diffrop.runtime.atomic_write``): a crash, SIGKILL or full disk
during a save leaves the previous ``last.ckpt`` intact, never a truncated one, and a full disk says so. Unlike Lightning's default it does not hold a second copy of
the whole checkpoint in host memory. Wired in through ``trainer.plugins`` (configs/trainer/default.yaml).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import nn

from diffrop.runtime.atomic_write import atomic_write
from diffrop.training.lightning_internals import is_local_file_protocol


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with write-to-temp + fsync + ``os.replace`` for local paths (remote URLs: Lightning's)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_save(checkpoint, path)


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` that either fully replaces ``path`` or leaves it untouched; a full disk raises
    ``DiskFullError`` naming the path (``diffrop.runtime.atomic_write``)."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """Open a checkpoint lazily (memory-mapped) with a clear error for a truncated or foreign file."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # truncated zip, pickle garbage, an empty file ...
        raise ValueError(
            f"checkpoint {path} is corrupt or truncated and cannot be read ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); delete it or pass another ckpt_path"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(
            f"{path} is not a Lightning checkpoint (no 'state_dict'); pass a file from src/train.py"
        )
    return ckpt


def check_compatible(path: str | Path, module: nn.Module) -> None:
    """Raise ValueError naming what differs when ``path`` holds weights of another network or class count.

    Resuming would otherwise fail deep inside ``load_state_dict`` with a 200-line size-mismatch listing.
    """
    saved = load_checkpoint_file(path)["state_dict"]
    ours = module.state_dict()
    missing = sorted(k for k in ours if k not in saved)
    unexpected = sorted(k for k in saved if k not in ours)
    shapes = [
        (k, tuple(saved[k].shape), tuple(v.shape))
        for k, v in ours.items()
        if k in saved and saved[k].shape != v.shape
    ]
    if not (missing or unexpected or shapes):
        return
    problems = []
    key = "net.label_embedding.weight"
    if key in saved and key in ours and saved[key].shape[0] != ours[key].shape[0]:
        problems.append(  # one label-embedding row per class
            f"class count differs: checkpoint {saved[key].shape[0]} classes, this config {ours[key].shape[0]}"
        )
    if shapes:
        k, a, b = shapes[0]
        problems.append(f"{len(shapes)} tensors differ in shape, e.g. {k}: checkpoint {a}, this config {b}")
    if missing:
        problems.append(f"{len(missing)} weights missing from the checkpoint, e.g. {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} weights not in this network, e.g. {unexpected[0]}")
    raise ValueError(
        f"checkpoint {path} was written by a different network or dataset: {'; '.join(problems)}. "
        "Use the model/data config of the run that wrote it, or ckpt_path=null to start fresh"
    )
