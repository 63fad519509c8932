"""Run ``src/train.py``'s entry point in this process (one import for several tiny runs) and read checkpoints."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import open_dict

REPO = Path(__file__).resolve().parents[1]


def _load_tests_conftest():
    """tests/conftest.py by path: ``import conftest`` may give tests/slurm/conftest.py in a whole-suite run."""
    spec = importlib.util.spec_from_file_location("diffrop_tests_conftest", REPO / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_conftest = _load_tests_conftest()
THREADS: int = _conftest.THREADS
TINY_RUN_OVERRIDES: list[str] = _conftest.TINY_RUN_OVERRIDES
TRAIN_PY: Path = _conftest.TRAIN_PY


def _train_module():
    spec = importlib.util.spec_from_file_location("diffrop_train_entry", REPO / "src" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_in_process(overrides: list[str], run_dir: Path) -> None:
    """What ``python src/train.py *overrides hydra.run.dir=run_dir`` does, without a new interpreter."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"hydra.run.dir={run_dir}"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)  # Hydra's job runner sets these
        cfg.hydra.mode = RunMode.RUN
    HydraConfig.instance().set_config(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        del cfg["hydra"]
    _train_module().main.__wrapped__(cfg)


def load_ckpt(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def state_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names of tensors that are not bitwise equal (or missing on one side)."""
    keys = set(a) | set(b)
    return sorted(k for k in keys if k not in a or k not in b or not torch.equal(a[k], b[k]))
