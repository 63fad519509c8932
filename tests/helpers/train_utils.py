"""This checkout's paths and scripts, for tests: ``src/train.py`` run in this process (one import for several tiny
runs) or in a subprocess, an environment for any child Python process, and checkpoint reading."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from omegaconf import open_dict

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "configs"
TRAIN_PY = REPO / "src" / "train.py"

# Tests use tiny tensors: one intra-op thread is as fast on a quiet machine and up to 100x faster on a busy one
# (OpenMP threads spin-waiting for a core). OMP_NUM_THREADS=N in the environment overrides this; tests/conftest.py
# applies it to the test process, child_env to subprocesses that train.
THREADS = int(os.environ.get("OMP_NUM_THREADS", "1"))

# A run of a few seconds on a CPU: tiny UNet on 16x16 digits, CSV logging every step, a 1-image-per-class,
# 2-step (sampler.steps) sample grid at the end. Append trainer.max_steps=K and hydra.run.dir=DIR.
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
    "sampler.steps=2",
    "callbacks.sample_grid.per_class=1",
    "~callbacks.progress_bar",
    "~callbacks.model_summary",
]


def child_env(**extra: str) -> dict[str, str]:
    """``os.environ`` plus ``extra`` for a child Python process, with this checkout first on PYTHONPATH.

    The only place tests set PYTHONPATH. The repository root makes test-only Hydra ``_target_``s importable in
    the child (``tests.helpers.nan_term.NaNFrom``, ``tests.helpers.kill_at.KillAt``,
    ``tests.helpers.rank_probe.RankProbe``; sbatch passes the environment on to SLURM jobs), ahead of the
    unrelated top-level ``tests`` package that torch-fidelity installs; ``src`` makes ``import diffrop`` this
    checkout's code whatever else is installed.
    """
    path = os.pathsep.join(filter(None, [str(REPO), str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    return {**os.environ, **extra, "PYTHONPATH": path}


def train_env() -> dict[str, str]:
    """``child_env`` for ``src/train.py``: W&B offline, no warnings, THREADS intra-op threads."""
    return child_env(WANDB_MODE="offline", PYTHONWARNINGS="ignore", OMP_NUM_THREADS=str(THREADS))


def train_subprocess(*overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python src/train.py *overrides`` from the repo root, W&B offline, captured output."""
    return subprocess.run(
        [sys.executable, str(TRAIN_PY), *overrides],
        cwd=REPO,
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def load_script(path: str | Path, name: str) -> ModuleType:
    """Import a script that is not in a package (``src/train.py``, ``experiments/*.py``, ``benchmarks/bench.py``)
    by its path, as module ``name``, executed afresh on every call."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main_in_process(config_name: str, overrides: list[str], run_dir: Path, main) -> None:
    """Compose ``config_name`` with ``overrides`` as Hydra's job runner would for ``hydra.run.dir=run_dir`` and call
    the undecorated entry point ``main`` (``@hydra.main``'s ``__wrapped__``) in this process."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name, overrides=[*overrides, f"hydra.run.dir={run_dir}"], return_hydra_config=True
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)  # Hydra's job runner sets these
        cfg.hydra.mode = RunMode.RUN
    HydraConfig.instance().set_config(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        del cfg["hydra"]
    main.__wrapped__(cfg)


def train_in_process(overrides: list[str], run_dir: Path) -> None:
    """What ``python src/train.py *overrides hydra.run.dir=run_dir`` does, without a new interpreter."""
    main_in_process("train", overrides, run_dir, load_script(TRAIN_PY, "diffrop_train_entry").main)


def load_ckpt(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def state_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names of tensors that are not bitwise equal (or missing on one side)."""
    keys = set(a) | set(b)
    return sorted(k for k in keys if k not in a or k not in b or not torch.equal(a[k], b[k]))
