"""Test-only Lightning callback: every rank writes the random draws of each training step (t, eps, the condition mask,
the eq12 groups) to ``<out_dir>/rank<r>/step<k>.pt``, so tests/test_rank_streams.py can compare ranks and runs.

Add it with ``+callbacks.record_draws._target_=tests.helpers.record_draws.RecordDraws`` and
``+callbacks.record_draws.out_dir=<dir>`` in a process started with ``train_utils.child_env()``. It wraps the
module's ``forward_step`` (the one place a training step draws), so the run trains exactly as without it.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch


class RecordDraws(L.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        own = self.out_dir / f"rank{trainer.global_rank}"
        own.mkdir(parents=True, exist_ok=True)
        forward_step = module.forward_step

        def recording(*args, **kwargs):
            step = forward_step(*args, **kwargs)
            draws = {"t": step.t, "eps": step.eps, "cond": step.cond, "group": step.group, "y": step.y}
            draws = {k: None if v is None else v.detach().cpu().clone() for k, v in draws.items()}
            torch.save(draws, own / f"step{trainer.global_step:05d}.pt")
            return step

        module.forward_step = recording


def load_draws(out_dir: Path, rank: int) -> dict[int, dict[str, torch.Tensor]]:
    """{step: draws} of one rank."""
    files = sorted((Path(out_dir) / f"rank{rank}").glob("step*.pt"))
    return {int(p.stem[4:]): torch.load(p, weights_only=False) for p in files}
