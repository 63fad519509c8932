"""Shared fixtures: fake CIFAR trees in torchvision's real format, and tiny `src/train.py` runs in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from fakedata import bypass_cifar_md5, write_fake_cifar10, write_fake_cifar100

# Tests use tiny tensors: one intra-op thread is as fast on a quiet machine and up to 100x faster on a busy one
# (OpenMP threads spin-waiting for a core). OMP_NUM_THREADS=N in the environment overrides this.
THREADS = int(os.environ.get("OMP_NUM_THREADS", "1"))
torch.set_num_threads(THREADS)

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"
TRAIN_PY = REPO / "src" / "train.py"

# A run of a few seconds on a CPU: tiny UNet on 16x16 digits, CSV logging every step, a 1-image-per-class,
# 2-step sample grid at the end. Append trainer.max_steps=K and hydra.run.dir=DIR.
TINY_RUN_OVERRIDES = [
    "data=digits_lt",
    "model=tiny",
    "trainer=cpu",
    "logger=csv",
    "data.batch_size=8",
    "trainer.log_every_n_steps=1",
    "optim.warmup_steps=0",
    "optim.ema_decay=0.5",
    "callbacks.sample_grid.every_n_steps=0",
    "callbacks.sample_grid.steps=2",
    "callbacks.sample_grid.per_class=1",
    "~callbacks.progress_bar",
    "~callbacks.model_summary",
]


@dataclass(frozen=True)
class FakeCifar:
    root: Path
    labels10: np.ndarray  # training labels of the fake CIFAR-10, in file order
    labels100: np.ndarray


@pytest.fixture(scope="session")
def fake_cifar(tmp_path_factory) -> Iterator[FakeCifar]:
    """One fake CIFAR-10 (5000 per class) and CIFAR-100 (500 per class) tree per test session (~300 MB on disk)."""
    root = tmp_path_factory.mktemp("cifar")
    yield FakeCifar(root, write_fake_cifar10(root), write_fake_cifar100(root))
    shutil.rmtree(root, ignore_errors=True)  # pytest keeps old temp dirs; these are large


@pytest.fixture
def cifar_md5_bypass(monkeypatch) -> None:
    """Let torchvision load the fake CIFAR files (their md5s are not the real ones). Test-only."""
    bypass_cifar_md5(monkeypatch)


def train_subprocess(*overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python src/train.py *overrides`` from the repo root, W&B offline, captured output."""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(THREADS)}
    return subprocess.run(
        [sys.executable, str(TRAIN_PY), *overrides],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def tiny_run_overrides() -> tuple[str, ...]:
    return tuple(TINY_RUN_OVERRIDES)


@pytest.fixture(scope="session")
def run_train() -> Callable[..., subprocess.CompletedProcess]:
    """``run_train(*overrides, timeout=...)``: see ``train_subprocess``."""
    return train_subprocess
