"""Checkpoints written before the package was split into layers still load, evaluate and resume.

tests/data/legacy_v0.1_tiny.ckpt was written by `src/train.py` of v0.1 (commit 52e89d5, the last flat layout) on
digits_lt with a 2-step run of a very small UNet (base_channels 8, one level, no attention). Its stored config
names modules that have since moved (``diffrop.callbacks.SampleGrid``, ``diffrop.checkpoint_io...``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra._internal.utils import _locate

from diffrop import build
from diffrop.diffusion.sampling import sample
from tests.helpers.config_objects import sampler_spec

LEGACY = Path(__file__).parent / "data" / "legacy_v0.1_tiny.ckpt"
LEGACY_NET = [
    "model.net.base_channels=8",
    "model.net.channel_mult=[1]",
    "model.net.attn_resolutions=[]",
    "model.net.norm_groups=4",
]


def targets(node) -> list[str]:
    if isinstance(node, dict):
        own = [node["_target_"]] if isinstance(node.get("_target_"), str) else []
        return own + [t for v in node.values() for t in targets(v)]
    if isinstance(node, list):
        return [t for v in node for t in targets(v)]
    return []


def test_the_fixture_names_modules_that_moved():
    stored = targets(torch.load(LEGACY, map_location="cpu", weights_only=False)["diffrop_config"])
    assert "diffrop.callbacks.SampleGrid" in stored and "diffrop.checkpoint_io.AtomicCheckpointIO" in stored
    with pytest.raises(ImportError):
        _locate("diffrop.callbacks.SampleGrid")


def test_every_stored_target_resolves_after_upgrade():
    stored = torch.load(LEGACY, map_location="cpu", weights_only=False)["diffrop_config"]
    upgraded = targets(build.upgrade_stored_config(stored))
    assert len(upgraded) == len(targets(stored)) > 5
    for target in upgraded:
        assert callable(_locate(target)), target
    assert "diffrop.training.callbacks.SampleGrid" in upgraded


def test_legacy_data_config_builds_the_same_data():
    """eval.py rebuilds the data module from the stored config; v0.1 called data.balance `data.sampler`."""
    stored = torch.load(LEGACY, map_location="cpu", weights_only=False)["diffrop_config"]
    assert stored["data"]["sampler"] == "none" and "balance" not in stored["data"]
    _, _, cfg, _ = build.net_from_checkpoint(LEGACY)
    assert cfg.data.balance == "none" and "sampler" not in cfg.data
    dm = build.build_datamodule(cfg)
    dm.setup("fit")
    assert dm.num_classes == 10 and dm.class_freq.shape == (10,)


def test_legacy_checkpoint_samples():
    net, schedule, cfg, ckpt = build.net_from_checkpoint(LEGACY)
    assert ckpt["global_step"] == 2 and cfg.data.name == "digits_lt"
    labels = torch.arange(4)
    spec = sampler_spec(name="ddim", steps=2, guidance=1.0)
    images = sample(net, schedule, labels, (4, 3, 16, 16), spec, torch.Generator().manual_seed(0))
    assert images.shape == (4, 3, 16, 16) and torch.isfinite(images).all()


@pytest.mark.slow
def test_legacy_checkpoint_resumes(tmp_path, run_train, tiny_run_overrides):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(LEGACY, run_dir / "checkpoints" / "last.ckpt")
    proc = run_train(*tiny_run_overrides, *LEGACY_NET, "trainer.max_steps=3", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3  # resumed at step 2, not restarted
    assert "checkpoint predates per-rank random streams; from step 2 on" in proc.stdout + proc.stderr
    assert json.loads((run_dir / "data_summary.json").read_text())["dataset"] == "digits_lt"


def test_upgrade_adds_image_settings_to_image_data_only():
    """v0.1 predates data.skip_corrupt (image folders); the Gaussian mixture never had it and must not get it."""
    from omegaconf import OmegaConf

    from tests.helpers.train_utils import CONFIG_DIR

    gaussian = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "data" / "gaussian_lt.yaml"))
    gaussian["max_steps"] = 10
    upgraded = build.upgrade_stored_config({"data": gaussian})["data"]
    assert "skip_corrupt" not in upgraded
    assert build.build_datamodule(OmegaConf.create({"data": upgraded})).num_classes == 4


@pytest.mark.parametrize(
    "stored_target",
    [
        "diffrop.progress.progress_bar",
        "diffrop.runtime.progress.progress_bar",
    ],  # before v0.1's layers; before issue 29
)
def test_a_stored_progress_bar_builds_todays_bar(stored_target):
    """Checkpoints name the bar where it lived when they were written; it moved twice (into runtime/, then out of
    it to training/ with the other Lightning callbacks)."""
    from hydra.utils import instantiate

    from diffrop.training.progress_bars import LogProgress

    bar = {
        "_target_": stored_target,
        "kind": "log",
        "refresh_rate": 10,
        "every_n_steps": 0,
        "every_n_seconds": 30,
    }
    upgraded = build.upgrade_stored_config({"callbacks": {"progress_bar": bar}})["callbacks"]["progress_bar"]
    assert upgraded["_target_"] == "diffrop.training.progress_bars.progress_bar"
    assert isinstance(instantiate(upgraded), LogProgress)
