"""The benchmarked training run: the composed config of a short run of ``src/train.py`` and its Lightning step time."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from benchmarks.timing import CUDA, sync
from diffrop import build

REPO = Path(__file__).resolve().parents[1]
# (model config, image size, batch) per device kind: the default net at batch 128 on a GPU; CPU-sized batches on CPU
TRAIN_CASES = {"cuda": [("ddpm_unet", 32, 128)], "cpu": [("tiny", 16, 32), ("ddpm_unet", 32, 8)]}


def config(model: str, size: int, batch: int, *extra: str):
    """``configs/train.yaml`` for a short run on the bundled digits at the CIFAR shape, as Hydra composes it for
    ``src/train.py`` (a fresh run directory each call); no progress bar, sample grid or model summary."""
    overrides = [
        "data=digits_lt",  # bundled, no download; the CIFAR shape via data.image_size=32
        f"data.image_size={size}",
        f"data.batch_size={batch}",
        "data.imb_factor=1.0",  # all 1,797 images, enough for batch 128
        f"model={model}",
        f"trainer={'gpu' if CUDA else 'cpu'}",
        "logger=csv",
        "optim.warmup_steps=0",
        "trainer.log_every_n_steps=50",
        "callbacks.checkpoint.every_n_train_steps=100000",
        "~callbacks.sample_grid",
        "~callbacks.progress_bar",
        "~callbacks.model_summary",
        *extra,
    ]
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):  # what Hydra's job runner does for src/train.py
        cfg.hydra.runtime.output_dir = tempfile.mkdtemp(prefix="diffrop_bench_")
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


class StepTimes(L.Callback):
    """The time of every batch end, after a device sync."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        sync()
        self.stamps.append(time.perf_counter())


def fit(cfg, callback: L.Callback) -> None:
    """Train ``cfg`` (seed 0) through the project's builders, as src/train.py does, with ``callback`` added."""
    L.seed_everything(0, verbose=False)
    datamodule = build.build_datamodule(cfg)
    module = build.build_module(cfg, datamodule)
    trainer = build.build_trainer(
        cfg, cfg.paths.output_dir, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.callbacks.append(callback)
    trainer.fit(module, datamodule=datamodule)


def lightning_step(cfg, warmup: int, reps: int) -> float:
    """Median wall time between consecutive batch ends: the whole loop (data, hooks, logging) is inside."""
    timer = StepTimes()
    fit(cfg, timer)
    diffs = [b - a for a, b in zip(timer.stamps, timer.stamps[1:], strict=False)]
    return statistics.median(diffs[warmup:])


def train_cases(args) -> list[tuple[str, int, int]]:
    cases = TRAIN_CASES["cuda" if CUDA else "cpu"]
    return [c for c in cases if c[0] == args.model] if args.model else cases


def run_steps(args, model: str, size: int, batch: int, *extra: str, warmup: int | None = None) -> float:
    """Median Lightning step of one fresh short run (a new config, run directory and module every call)."""
    warmup = args.warmup if warmup is None else warmup
    cfg = config(model, size, batch, f"trainer.max_steps={warmup + args.reps + 1}", *extra)
    return lightning_step(cfg, warmup, args.reps)
