"""Test-only Lightning callback: every DDP rank reports how it ended, so a test can compare ranks.

Used by tests/slurm as `+callbacks.rank_probe._target_=tests.helpers.rank_probe.RankProbe`, importable in the job through
`train_utils.child_env()`'s PYTHONPATH
(sbatch exports the submitter's environment to the job). It is the only file a non-zero rank writes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Hash of names and exact bytes of every tensor: equal only for bitwise-identical weights."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        h.update(name.encode())
        h.update(state_dict[name].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class RankProbe(L.Callback):
    """At the end of fit, write ``<out_dir>/rank<global rank>.json``: step, world size, weights hash, SLURM env."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        report = {
            "global_rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "weights_sha256": weights_sha256(module.state_dict()),
            "cluster_environment": type(trainer.strategy.cluster_environment).__name__,
            "slurm_procid": os.environ.get("SLURM_PROCID"),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "pid": os.getpid(),
        }
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(report, indent=1))
