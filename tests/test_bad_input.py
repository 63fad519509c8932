"""Bad input gives one clear `error: ...` line and exit code 1 (no stack trace), and the run dir gets FAILED.

Config-group typos are Hydra's own error (it lists the options); the rest go through src/train.py's handler. Most
cases run the entry point in-process (same code path, one interpreter); a few go through the real command line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.config_objects import from_group
from tests.helpers.train_utils import REPO, THREADS, TINY_RUN_OVERRIDES, TRAIN_PY, child_env, train_in_process

TINY = [*TINY_RUN_OVERRIDES, "trainer.max_steps=1"]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = child_env(WANDB_MODE="offline", PYTHONWARNINGS="ignore", OMP_NUM_THREADS=str(THREADS))
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, str(TRAIN_PY), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def user_error(overrides: list[str], run_dir: Path, capsys) -> str:
    """Run in-process; assert exit 1, a FAILED file and exactly one `error:` line; return that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        train_in_process(overrides, run_dir)
    assert info.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, lines
    assert (run_dir / "FAILED").is_file()
    return lines[0]


# --- through the command line --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_unknown_loss_lists_the_options(tmp_path):
    out = cli("loss=pcl_typo", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 1
    assert "Could not find 'loss/pcl_typo'" in out.stderr
    assert "Available options in 'loss'" in out.stderr and "pcl_exp" in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("group", "option"), [("tau", "exp_decy"), ("data", "cifar10_lt")])
def test_unknown_tau_or_data_lists_the_options(tmp_path, group, option):
    out = cli(f"{group}={option}", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 1
    assert f"Could not find '{group}/{option}'" in out.stderr
    assert f"Available options in '{group}'" in out.stderr


@pytest.mark.slow
def test_negative_tau0_is_one_line_on_the_command_line(tmp_path):
    out = cli(*TINY, "loss=pcl_exp", "tau.tau0=-1", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        "error: tau.tau0 must be a finite number >= 0, got -1 [config key loss.terms.pcl.tau]"
    )
    assert "Traceback" not in out.stderr
    assert (tmp_path / "FAILED").read_text().startswith("ValueError: tau.tau0 must be a finite number")


@pytest.mark.slow
def test_a_failed_start_leaves_no_timestamped_run_folder(tmp_path):
    """Without hydra.run.dir the run gets a fresh timestamped folder; a start that fails before its first step
    removes it again (the error line says what to fix), so bad-input tries leave no folders holding only FAILED."""
    out = cli(*TINY, "loss=pcl_exp", "tau.tau0=-1", f"paths.log_dir={tmp_path}")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("error: tau.tau0 must be a finite number >= 0")
    assert list((tmp_path / "train" / "runs").iterdir()) == []


# --- in-process: hyper-parameters ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["loss=pcl_exp", "tau=constant", "tau.tau0=nan"], "tau.tau0 must be a finite number >= 0, got nan"),
        (["loss=pcl_exp", "tau.temperature=0"], "tau.temperature must be a finite number > 0, got 0"),
        (
            ["loss=pcl_hinge", "loss.terms.pcl.margin=-0.5"],
            "loss.terms.pcl.margin must be a finite number > 0",
        ),
        (
            ["loss=pcl_hinge", "loss.terms.pcl.margin=nan"],
            "loss.terms.pcl.margin must be a finite number > 0",
        ),
        (["data.imb_factor=0"], "data.imb_factor must be in (0, 1]"),
        (["data.imb_factor=1.5"], "data.imb_factor must be in (0, 1]"),
        (["data.imb_factor=nan"], "data.imb_factor must be in (0, 1]"),
        (["optim.nonfinite=ignore"], "optim.nonfinite='ignore' is not one of ['stop', 'skip']"),
        (["data.on_device=maybe"], "data.on_device must be true, false or auto"),
    ],
)
def test_bad_hyperparameter(tmp_path, capsys, overrides, expected):
    assert expected in user_error([*TINY, *overrides], tmp_path, capsys)


# --- in-process: data -----------------------------------------------------------------------------------------------
def test_missing_cifar_root(tmp_path, capsys):
    line = user_error(
        [*TINY, "data=cifar10lt", f"data.root={tmp_path / 'nowhere'}"], tmp_path / "run", capsys
    )
    assert "CIFAR-10 not found" in line and "data.download=true" in line


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)


def test_imagefolder_wrong_layout(tmp_path, capsys):
    _png(tmp_path / "tree" / "cat" / "0.png")  # no train/ level
    line = user_error(
        [*TINY, "data=imagefolder_lt", f"data.root={tmp_path / 'tree'}"], tmp_path / "run", capsys
    )
    assert f"expected a folder {tmp_path / 'tree' / 'train'}" in line


def _bad_tree(root: Path) -> list[Path]:
    """Two classes of 4 readable 8x8 PNGs each, plus a truncated PNG in one and a text file named .png in the
    other; returns the bad files."""
    for cls in ("cat", "dog"):
        for i in range(4):
            _png(root / "train" / cls / f"{i}.png")
    truncated, garbage = root / "train" / "cat" / "9_truncated.png", root / "train" / "dog" / "9_garbage.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    garbage.write_text("not an image")
    for bad in (truncated, garbage):  # the files really are unreadable
        with pytest.raises(OSError), Image.open(bad) as im:
            im.load()
    return [truncated, garbage]


def test_imagefolder_unreadable_images_are_all_named_in_one_line(tmp_path, capsys):
    bad = _bad_tree(tmp_path / "tree")
    line = user_error(
        [*TINY, "data=imagefolder_lt", f"data.root={tmp_path / 'tree'}"], tmp_path / "run", capsys
    )
    assert "2 unreadable image(s)" in line and all(str(f) in line for f in bad)
    assert "data.skip_corrupt=true" in line


def test_imagefolder_skip_corrupt_leaves_them_out_and_counts_them(tmp_path):
    import json

    bad = _bad_tree(tmp_path / "tree")
    dm = from_group(
        "data",
        "imagefolder_lt",
        root=str(tmp_path / "tree"),
        imb_factor=1.0,
        image_size=8,
        skip_corrupt=True,
    )
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        summary = json.loads(dm.write_summary(tmp_path).read_text())
    assert summary["class_counts"] == [4, 4] and summary["num_images"] == 8
    assert summary["skipped_unreadable"] == 2 and summary["skipped_files"] == [str(f) for f in bad]


def test_imagefolder_empty_class(tmp_path, capsys):
    _png(tmp_path / "tree" / "train" / "cat" / "0.png")
    (tmp_path / "tree" / "train" / "dog").mkdir()
    line = user_error(
        [*TINY, "data=imagefolder_lt", f"data.root={tmp_path / 'tree'}"], tmp_path / "run", capsys
    )
    assert "class folder" in line and "dog has no .png/.jpg images" in line


# --- in-process: checkpoints ----------------------------------------------------------------------------------------
def _tiny_checkpoint(path: Path, num_classes: int, base_channels: int) -> None:
    """A checkpoint of the tiny model with another class count / width, in the same format train.py writes."""
    from hydra import compose, initialize_config_dir

    from diffrop import build
    from diffrop.training.module import DiffusionModule

    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, f"model.net.base_channels={base_channels}"])
    net = build.build_net(cfg, num_classes, in_channels=3, image_size=cfg.data.image_size)
    freq = torch.ones(num_classes) / num_classes
    module = DiffusionModule(
        net, build.build_objective(cfg), _schedule(cfg), freq, **build.module_settings(cfg)
    )
    torch.save({"state_dict": module.state_dict(), "global_step": 1}, path)


def _schedule(cfg):
    from hydra.utils import instantiate

    return instantiate(cfg.diffusion)


def test_checkpoint_with_another_class_count(tmp_path, capsys):
    ckpt = tmp_path / "five.ckpt"
    _tiny_checkpoint(ckpt, num_classes=5, base_channels=32)
    line = user_error([*TINY, f"ckpt_path={ckpt}"], tmp_path / "run", capsys)
    assert "different network or dataset" in line
    assert "class count differs: checkpoint 5 classes, this config 10" in line


def test_checkpoint_of_another_network(tmp_path, capsys):
    ckpt = tmp_path / "wide.ckpt"
    _tiny_checkpoint(ckpt, num_classes=10, base_channels=64)
    line = user_error([*TINY, f"ckpt_path={ckpt}"], tmp_path / "run", capsys)
    assert "tensors differ in shape, e.g. net." in line and "checkpoint (64," in line


def test_truncated_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "cut.ckpt"
    _tiny_checkpoint(ckpt, num_classes=10, base_channels=32)
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    line = user_error([*TINY, f"ckpt_path={ckpt}"], tmp_path / "run", capsys)
    assert f"checkpoint {ckpt} is corrupt or truncated" in line


def test_missing_checkpoint(tmp_path, capsys):
    line = user_error([*TINY, f"ckpt_path={tmp_path / 'nope.ckpt'}"], tmp_path / "run", capsys)
    assert "does not exist" in line


def test_eval_and_training_read_a_truncated_checkpoint_with_one_message(tmp_path):
    from diffrop.build import net_from_checkpoint

    ckpt = tmp_path / "cut.ckpt"
    _tiny_checkpoint(ckpt, num_classes=10, base_channels=32)
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(ValueError, match=f"checkpoint {ckpt} is corrupt or truncated"):
        net_from_checkpoint(ckpt)
