"""The SMOKE preset of the reproduction driver: every stage shrunk so a whole table runs on a CPU in minutes.

Smoke runs test the plumbing (configs, resume/skip logic, evaluation, rendering), never the method: the training
side is ``configs/experiment/preset/smoke.yaml``; this module holds the evaluation / classifier side and the
random stand-in for the Inception network.
"""

from __future__ import annotations

from pathlib import Path

import torch

SMOKE_SAMPLES = 60  # generated images per smoke cell: 6 per digit class, >= 18 per shot group
SMOKE_TRAIN = ["+experiment/preset@_global_=smoke"]
SMOKE_EVAL = [
    "eval.reference_per_class=20",
    "eval.metrics.precision_recall.k=3",
    "eval.metrics.prd.clusters_per_class=1",
    "eval.metrics.prd.runs=1",
    "eval.progress=false",
    "wandb.enabled=false",
]
# per table, after SMOKE_EVAL: fig4b's sweep plumbing with 3 of its 7 guidance values
SMOKE_TABLE_EVAL = {"fig4b": ["eval.guidance_sweep=[0,0.8,1.6]"]}
# data.image_size: the smoke models' size (configs/experiment/preset/smoke.yaml), which generated images must match
SMOKE_CLASSIFY = ["classifier.depth=8", "trainer.max_epochs=3", "trainer.accelerator=cpu", "batch_size=64",
                  "optim.warmup_epochs=1", "optim.milestones=[2]", "optim.gamma=0.1", "data.image_size=8"]  # fmt: skip


class _SmokeExtractor(torch.nn.Module):
    """Stands in for the Inception network in smoke runs: a fixed random conv + pooling, 32-d features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, kernel_size=13, stride=13)
        self.pool = torch.nn.AdaptiveAvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.conv(x))).flatten(1)


def write_smoke_extractor(path: Path, seed: int = 0) -> Path:
    """A random TorchScript feature network in fid-helper's file format (``eval.extractor=fid-helper``):
    the real Inception takes seconds per image on a CPU and cannot be downloaded here. Smoke only."""
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(_SmokeExtractor().eval()), str(path))
    return path
