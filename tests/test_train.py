"""`src/train.py` end to end in subprocesses: a tiny run writes its run directory, and running again in the same
directory with more steps resumes it exactly (the same weights, optimizer state and EMA as an uninterrupted run)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers.train_utils import TRAIN_PY, load_script

FIRST_STEPS, FINAL_STEPS = 3, 5


def _train_module():
    return load_script(TRAIN_PY, "train_entry")


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _check(proc, run_dir: Path) -> None:
    failed = run_dir / "FAILED"
    detail = failed.read_text() if failed.is_file() else proc.stderr[-4000:]
    assert proc.returncode == 0, f"train.py failed (rc {proc.returncode}):\n{detail}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, run_train, tiny_run_overrides):
    """Run A: 3 steps, then again in the same directory with max_steps=5 (resume). Run B: 5 steps straight."""
    base = tmp_path_factory.mktemp("train")
    a, b = base / "a", base / "b"
    first = run_train(*tiny_run_overrides, f"trainer.max_steps={FIRST_STEPS}", f"hydra.run.dir={a}")
    _check(first, a)
    snapshot = base / "a_after_first"  # the run directory as the first run left it
    shutil.copytree(a, snapshot)
    second = run_train(*tiny_run_overrides, f"trainer.max_steps={FINAL_STEPS}", f"hydra.run.dir={a}")
    straight = run_train(*tiny_run_overrides, f"trainer.max_steps={FINAL_STEPS}", f"hydra.run.dir={b}")
    return {"first": snapshot, "resumed": a, "straight": b, "second_proc": second, "straight_proc": straight}


# --- the first run ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_directory_layout(runs):
    d = runs["first"]
    for rel in ("checkpoints/last.ckpt", "metrics.csv", "data_summary.json", ".hydra/config.yaml"):
        assert (d / rel).is_file(), f"missing {rel} in the run directory"
    assert not (d / "FAILED").exists()
    assert list((d / "samples").glob("step_*.png")), "the end-of-training sample grid is missing"


@pytest.mark.slow
def test_metrics_csv_has_the_training_loss(runs):
    rows = [r for r in _rows(runs["first"] / "metrics.csv") if r.get("train/loss")]
    assert [int(r["step"]) for r in rows] == list(range(FIRST_STEPS))
    assert {"train/loss", "train/loss_ddpm"} <= set(rows[0])
    for r in rows:
        assert 0.1 < float(r["train/loss"]) < 10  # eps-MSE of an untrained net is about 1


@pytest.mark.slow
def test_data_summary_and_hydra_config(runs):
    summary = json.loads((runs["first"] / "data_summary.json").read_text())
    assert summary["dataset"] == "digits_lt" and summary["imb_factor"] == 0.1
    assert summary["class_counts"][0] == 178 and summary["class_counts"][9] == 18  # 183 * 0.1 -> 18
    cfg = yaml.safe_load((runs["first"] / ".hydra/config.yaml").read_text())
    assert cfg["data"]["name"] == "digits_lt" and cfg["trainer"]["max_steps"] == FIRST_STEPS


@pytest.mark.slow
def test_checkpoint_carries_its_config(runs):
    ckpt = _load(runs["first"] / "checkpoints/last.ckpt")
    assert ckpt["global_step"] == FIRST_STEPS
    cfg = ckpt["diffrop_config"]
    assert cfg["data"]["name"] == "digits_lt" and cfg["model"]["net"]["base_channels"] == 32
    assert cfg["paths"]["output_dir"] == str(runs["resumed"])  # resolved, not "${hydra:...}"
    assert cfg["trainer"]["max_steps"] == FIRST_STEPS
    keys = ckpt["state_dict"].keys()
    assert any(k.startswith("net.") for k in keys) and any(k.startswith("ema.") for k in keys)


@pytest.mark.slow
def test_net_from_checkpoint_rebuilds_the_ema_net(runs):
    from diffrop import build

    path = runs["first"] / "checkpoints/last.ckpt"
    net, schedule, _, ckpt = build.net_from_checkpoint(path)
    assert net.num_classes == 10 and net.image_size == 16 and schedule.num_steps == 1000
    for name, value in net.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][f"ema.{name}"])
    raw, *_ = build.net_from_checkpoint(path, ema=False)
    assert any(not torch.equal(p, q) for p, q in zip(raw.parameters(), net.parameters(), strict=True))


# --- resuming in the same directory ---------------------------------------------------------------------------


@pytest.mark.slow
def test_second_run_resumes(runs):
    _check(runs["second_proc"], runs["resumed"])
    assert (
        "Restored all states from the checkpoint" in runs["second_proc"].stdout + runs["second_proc"].stderr
    )
    ckpt = _load(runs["resumed"] / "checkpoints/last.ckpt")
    assert ckpt["global_step"] == FINAL_STEPS
    # Adam's per-parameter step count continued from the checkpoint: 3 + 2, not 2.
    steps = {float(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}
    assert steps == {float(FINAL_STEPS)}
    assert ckpt["diffrop_config"]["trainer"]["max_steps"] == FINAL_STEPS


@pytest.mark.slow
def test_resumed_run_equals_an_uninterrupted_run(runs):
    """Batch order is a function of the step and the RNG state travels in the checkpoint, so 3 + 2 steps give
    exactly the weights, EMA and Adam moments of 5 straight steps."""
    _check(runs["second_proc"], runs["resumed"])
    _check(runs["straight_proc"], runs["straight"])
    a = _load(runs["resumed"] / "checkpoints/last.ckpt")
    b = _load(runs["straight"] / "checkpoints/last.ckpt")
    first = _load(runs["first"] / "checkpoints/last.ckpt")
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=0, atol=0, msg=k)
    for i, s in a["optimizer_states"][0]["state"].items():
        torch.testing.assert_close(
            s["exp_avg"], b["optimizer_states"][0]["state"][i]["exp_avg"], rtol=0, atol=0
        )
        torch.testing.assert_close(
            s["exp_avg_sq"], b["optimizer_states"][0]["state"][i]["exp_avg_sq"], rtol=0, atol=0
        )
    # The EMA continued from the checkpoint's EMA, moved on, and is not the raw net (decay 0.5 in these runs).
    sd, sd3 = a["state_dict"], first["state_dict"]
    ema_keys = [k for k in sd if k.startswith("ema.") and sd[k].is_floating_point()]
    assert any(not torch.equal(sd[k], sd3[k]) for k in ema_keys)
    assert any(not torch.equal(sd[k], sd["net." + k[4:]]) for k in ema_keys)


@pytest.mark.slow
def test_resumed_run_keeps_earlier_metrics(runs):
    _check(runs["second_proc"], runs["resumed"])
    rows = [r for r in _rows(runs["resumed"] / "metrics.csv") if r.get("train/loss")]
    assert [int(r["step"]) for r in rows] == list(range(FINAL_STEPS))
    straight = [r for r in _rows(runs["straight"] / "metrics.csv") if r.get("train/loss")]
    assert [r["train/loss"] for r in rows] == [r["train/loss"] for r in straight]


# --- fast checks of the entry point -------------------------------------------------------------------------


def test_resolve_ckpt_path(tmp_path):
    resolve = _train_module().resolve_ckpt_path
    assert resolve("auto", tmp_path) is None  # fresh run
    assert resolve(None, tmp_path) is None
    with pytest.raises(FileNotFoundError, match=r"hydra\.run\.dir"):
        resolve("last", tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve(str(tmp_path / "nope.ckpt"), tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert resolve("auto", tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
    assert resolve("last", tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")


@pytest.mark.slow
def test_failed_run_leaves_a_failed_file(tmp_path, run_train, tiny_run_overrides):
    run_dir = tmp_path / "run"
    proc = run_train(
        *tiny_run_overrides,
        "data=imagefolder_lt",
        f"data.root={tmp_path / 'nowhere'}",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode != 0
    text = (run_dir / "FAILED").read_text()
    assert text.startswith("FileNotFoundError:") and str(tmp_path / "nowhere" / "train") in text
