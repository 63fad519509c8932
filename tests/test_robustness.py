"""Faults during training: NaN/inf losses (stop | skip), crashes during a checkpoint save, failing sweep jobs."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch

from diffrop.training.checkpoint_io import AtomicCheckpointIO, atomic_save
from diffrop.training.nonfinite import NonFiniteGuard, NonFiniteLossError
from tests.helpers.train_utils import (
    REPO,
    TINY_RUN_OVERRIDES,
    TRAIN_PY,
    load_ckpt,
    state_diff,
    train_env,
    train_in_process,
)


def bad_term(step: int) -> list[str]:
    return ["+loss.terms.bad._target_=tests.helpers.nan_term.NaNFrom", f"+loss.terms.bad.step={step}"]


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = train_env()
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, str(TRAIN_PY), *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


# --- atomic checkpoints ---------------------------------------------------------------------------------------
def test_crash_during_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1, "w": torch.arange(1000.0)}, path)
    before = path.read_bytes()

    def crash(obj, f, *args, **kwargs):  # write part of a file, then die
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="No space"):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(1000)}, path)
    assert path.read_bytes() == before  # the previous file, intact
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temp file left behind
    monkeypatch.undo()
    assert load_ckpt(path)["global_step"] == 1


def test_atomic_save_replaces_and_loads(tmp_path):
    path = tmp_path / "a.ckpt"
    atomic_save({"x": 1}, path)
    atomic_save({"x": 2}, path)
    assert torch.load(path, weights_only=False) == {"x": 2}


def test_trainer_from_config_uses_atomic_io(tmp_path):
    from hydra import compose, initialize_config_dir

    from diffrop import build

    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY_RUN_OVERRIDES, f"paths.output_dir={tmp_path}"])
    trainer = build.build_trainer(cfg, tmp_path)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


# --- NaN / inf ----------------------------------------------------------------------------------------------------
def test_guard_names_step_and_term():
    guard = NonFiniteGuard("stop", ["ddpm", "pcl"])
    ok, nan = torch.tensor(0.5), torch.tensor(float("nan"))
    for step, pcl in enumerate([ok, ok, nan, ok]):
        guard.observe_loss(ok + pcl, {"ddpm": ok, "pcl": pcl})
        guard.observe_grads([torch.ones(3)], step)
    with pytest.raises(NonFiniteLossError, match=r"global step 2: loss term 'pcl' = nan \(1 non-finite"):
        guard.check()


def test_guard_flags_inf_gradients_with_finite_loss():
    guard = NonFiniteGuard("skip", ["ddpm"])
    guard.observe_loss(torch.tensor(1.0), {"ddpm": torch.tensor(1.0)})
    assert float(guard.observe_grads([torch.tensor([1.0, float("inf")])], 5)) == 1.0
    guard.mode = "stop"
    with pytest.raises(NonFiniteLossError, match="global step 5: gradient norm = inf"):
        guard.check()


@pytest.mark.slow
def test_nan_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    """NaN from step 3 on; periodic checkpoints every 2 steps: the step-2 checkpoint must survive unchanged."""
    run = tmp_path / "run"
    out = run_cli(
        *TINY_RUN_OVERRIDES,
        *bad_term(3),
        "trainer.max_steps=8",
        "callbacks.checkpoint.every_n_train_steps=2",
        f"hydra.run.dir={run}",
    )
    assert out.returncode == 1, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr
    assert "non-finite loss at global step 3: loss term 'bad' = nan" in errors[0]
    assert "Traceback" not in out.stderr  # one line, not a stack trace
    assert "NonFiniteLossError: non-finite loss at global step 3" in (run / "FAILED").read_text()
    ckpt = load_ckpt(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


@pytest.mark.parametrize("fused", ["true", "false"])  # device-side found_inf | host-side gradient drop
def test_skip_leaves_weights_unchanged(tmp_path, fused):
    """Steps 2 and 3 are NaN and skipped: the raw weights and Adam state after 4 steps are those after 2 steps."""
    common = [*TINY_RUN_OVERRIDES, f"optim.fused_adam={fused}", "optim.nonfinite=skip"]
    train_in_process([*common, "trainer.max_steps=2"], tmp_path / "two")
    train_in_process([*common, *bad_term(2), "trainer.max_steps=4"], tmp_path / "skipped")
    two, skipped = (
        load_ckpt(tmp_path / "two/checkpoints/last.ckpt"),
        load_ckpt(tmp_path / "skipped/checkpoints/last.ckpt"),
    )
    assert skipped["global_step"] == 4
    net = {k: v for k, v in two["state_dict"].items() if k.startswith("net.")}
    assert state_diff(net, {k: v for k, v in skipped["state_dict"].items() if k.startswith("net.")}) == []
    adam2, adam4 = two["optimizer_states"][0]["state"], skipped["optimizer_states"][0]["state"]
    assert all(state_diff(adam2[k], adam4[k]) == [] for k in adam2)  # step count 2, moments unchanged
    assert skipped["nonfinite"] == {"count": 2}
    rows = list(csv.DictReader((tmp_path / "skipped/metrics.csv").open()))
    counts = [float(r["train/nonfinite_steps"]) for r in rows if r.get("train/nonfinite_steps")]
    assert counts == [0.0, 0.0, 1.0, 2.0]


# --- sweeps -------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_multirun_with_a_failing_job_finishes_the_others_and_the_table_shows_it(tmp_path):
    """Hydra's basic launcher runs every job of the sweep and raises the first failure at the end (exit 1)."""
    from diffrop.paper.report import report

    runs = tmp_path / "runs"
    out = run_cli(
        "-m",
        *TINY_RUN_OVERRIDES,
        "trainer.max_steps=2",
        "+loss.terms.bad._target_=tests.helpers.nan_term.NaNFrom",
        "+loss.terms.bad.step=0,1000",  # job 0: NaN at once; job 1: never
        f"hydra.sweep.dir={runs}/t",
        "hydra.sweep.subdir=cell${hydra.job.num}",
    )
    assert out.returncode == 1, out.stderr
    assert "error: non-finite loss at global step 0" in out.stderr
    assert (runs / "t/cell0/FAILED").is_file()
    assert not (runs / "t/cell1/FAILED").exists()
    assert load_ckpt(runs / "t/cell1/checkpoints/last.ckpt")["global_step"] == 2  # the second job still ran

    paper = tmp_path / "paper.yaml"
    paper.write_text(
        "t:\n  title: sweep\n  columns: [{key: fid, name: FID, lower_is_better: true}]\n  rows:\n"
        "    - {cell: cell0, dataset: d, method: nan, paper: {fid: 1.0}}\n"
        "    - {cell: cell1, dataset: d, method: ok, paper: {fid: 1.0}}\n"
    )
    table = report("t", runs, tmp_path / "out", paper=paper)
    assert table.runs["cell0"].status == "failed"
    assert "non-finite loss at global step 0" in table.runs["cell0"].reason
    assert table.runs["cell1"].status == "missing"  # trained, not evaluated
    assert "FAILED" in (tmp_path / "out" / "t.md").read_text()


def test_guard_count_survives_a_restore():
    guard = NonFiniteGuard("skip", ["ddpm"])
    guard.load_state_dict({"count": 3}, torch.device("cpu"))
    guard.observe_loss(torch.tensor(float("inf")), {"ddpm": torch.tensor(float("inf"))})
    guard.observe_grads([torch.ones(2)], 7)
    assert guard.state_dict() == {"count": 4}
