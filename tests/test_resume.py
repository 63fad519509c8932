"""Exact resume: interrupted + resumed runs end with the same weights, EMA, optimizer and step as one uninterrupted run.

Bitwise on CPU (same process or not, one intra-op thread): the batch order is a function of the global step
(StepBatchSampler), every step's random draws are seeded from (seed, rank, step) (training.rank_streams), and the
EMA update runs inside the optimizer step, so a checkpoint of step k holds the EMA of step k.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffrop.evaluation.records import results_path
from diffrop.training.nonfinite import NonFiniteLossError
from tests.helpers.train_utils import (
    REPO,
    TINY_RUN_OVERRIDES,
    TRAIN_PY,
    load_ckpt,
    state_diff,
    train_env,
    train_in_process,
)

# warm-up across the interruption (LR schedule), per-sample label drop (device RNG), flips (device RNG), EMA
BASE = [
    *TINY_RUN_OVERRIDES,
    "optim.warmup_steps=4",
    "optim.ema_decay=0.9",
    "model.label_drop=sample",
    "data.hflip=true",
    "callbacks.checkpoint.every_n_train_steps=3",
]


def assert_same_final(a: Path, b: Path) -> None:
    ca, cb = load_ckpt(a / "checkpoints" / "last.ckpt"), load_ckpt(b / "checkpoints" / "last.ckpt")
    assert ca["global_step"] == cb["global_step"]
    assert state_diff(ca["state_dict"], cb["state_dict"]) == []  # net.* and ema.*, bitwise
    oa, ob = ca["optimizer_states"][0]["state"], cb["optimizer_states"][0]["state"]
    assert oa.keys() == ob.keys()
    for k in oa:
        assert state_diff(oa[k], ob[k]) == [], k  # Adam step, exp_avg, exp_avg_sq
    assert ca["lr_schedulers"] == cb["lr_schedulers"]


@pytest.mark.slow
def test_resume_is_bitwise_exact(tmp_path):
    full, split, crashed = tmp_path / "full", tmp_path / "split", tmp_path / "crashed"
    train_in_process([*BASE, "trainer.max_steps=6"], full)

    train_in_process([*BASE, "trainer.max_steps=3"], split)  # ends with last.ckpt at step 3
    assert load_ckpt(split / "checkpoints" / "last.ckpt")["global_step"] == 3
    train_in_process([*BASE, "trainer.max_steps=6"], split)  # ckpt_path=auto resumes it
    assert_same_final(full, split)

    # A NaN at step 4 stops the run; the periodic checkpoint of step 3 is kept and resuming from it (without the
    # bad term) ends exactly where the uninterrupted run did. The bad term adds exactly 0 before step 4.
    bad = ["+loss.terms.bad._target_=tests.helpers.nan_term.NaNFrom", "+loss.terms.bad.step=4"]
    with pytest.raises(SystemExit) as exit_info:
        train_in_process([*BASE, *bad, "trainer.max_steps=6"], crashed)
    assert exit_info.value.code == 1
    assert "NonFiniteLossError" in (crashed / "FAILED").read_text()
    assert load_ckpt(crashed / "checkpoints" / "last.ckpt")["global_step"] == 3
    train_in_process([*BASE, "trainer.max_steps=6", "ckpt_path=last"], crashed)
    assert not (crashed / "FAILED").exists()
    assert_same_final(full, crashed)
    assert NonFiniteLossError  # imported for the FAILED text above


def _popen(run_dir: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, str(TRAIN_PY), *BASE, f"hydra.run.dir={run_dir}", *extra]
    return subprocess.Popen(
        cmd, cwd=REPO, env=train_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(
                f"run ended (rc {proc.returncode}) before {path} appeared:\n{proc.stdout.read()}"
            )
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.05)


def _finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


STEPS = "trainer.max_steps=40"


@pytest.mark.slow
def test_sigkill_then_ckpt_path_last_resumes_exactly(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    rc, out = _finish(_popen(full, STEPS))
    assert rc == 0, out

    proc = _popen(killed, STEPS)
    _wait_for(killed / "checkpoints" / "last.ckpt", proc)  # the first periodic checkpoint (step 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = load_ckpt(killed / "checkpoints" / "last.ckpt")["global_step"]
    assert 3 <= step < 40 and step % 3 == 0  # a periodic checkpoint, intact

    rc, out = _finish(_popen(killed, STEPS, "ckpt_path=last"))
    assert rc == 0, out
    assert_same_final(full, killed)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_nonzero(tmp_path):
    """Pre-emption: Lightning turns SIGTERM into SIGTERMException after the current step; CheckpointOnInterrupt
    writes last.ckpt at that step (no periodic checkpoint exists here), and the run resumes from it exactly."""
    full, term = tmp_path / "full", tmp_path / "term"
    no_periodic = "callbacks.checkpoint.every_n_train_steps=1000"
    rc, out = _finish(_popen(full, STEPS, no_periodic))
    assert rc == 0, out

    proc = _popen(term, STEPS, no_periodic)
    _wait_for(term / "metrics.csv", proc)  # training has started
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    rc, out = _finish(proc)
    assert rc == 143, out  # 128 + SIGTERM, so SLURM / the shell see an interrupted job
    step = load_ckpt(term / "checkpoints" / "last.ckpt")["global_step"]
    assert 0 < step < 40

    rc, out = _finish(_popen(term, STEPS, no_periodic))
    assert rc == 0, out
    assert_same_final(full, term)


# --- randomised SIGKILLs ------------------------------------------------------------------------------------------
FAULT_STEPS, SAVE_EVERY, GRID_EVERY = 12, 2, 3
FAULT = [
    f"trainer.max_steps={FAULT_STEPS}",
    f"callbacks.checkpoint.every_n_train_steps={SAVE_EVERY}",
    f"callbacks.sample_grid.every_n_steps={GRID_EVERY}",
    "+callbacks.kill_at._target_=tests.helpers.kill_at.KillAt",
]


def kill_plan(seed: int) -> list[tuple[str, int]]:
    """Three kills, one of each kind, at random increasing steps where that kind can happen (a save every
    SAVE_EVERY steps, a grid every GRID_EVERY steps)."""
    import random

    rng = random.Random(seed)
    valid = {
        "step": range(1, FAULT_STEPS),
        "save": range(SAVE_EVERY, FAULT_STEPS, SAVE_EVERY),
        "grid": range(GRID_EVERY, FAULT_STEPS, GRID_EVERY),
    }
    while True:
        kinds = rng.sample(sorted(valid), 3)
        steps = sorted(rng.sample(range(1, FAULT_STEPS), 3))
        if all(s in valid[k] for k, s in zip(kinds, steps, strict=True)):
            return list(zip(kinds, steps, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0])
def test_random_sigkills_in_steps_saves_and_grids_resume_bitwise_exactly(tmp_path, seed, monkeypatch):
    """The same command after each SIGKILL (in a step, half-way through a checkpoint save, in a sample grid) ends
    bitwise where an uninterrupted run does, with no temporary file left behind."""
    full, killed = tmp_path / "full", tmp_path / "killed"
    rc, out = _finish(_popen(full, *FAULT))
    assert rc == 0, out
    plan = kill_plan(seed)
    for where, step in plan:
        monkeypatch.setenv("DIFFROP_KILL_AT", f"{where}:{step}")
        rc, out = _finish(_popen(killed, *FAULT))
        assert rc == -signal.SIGKILL, (
            f"plan {plan} (seed {seed}): {where}:{step} did not kill:\n{out[-3000:]}"
        )
        last = killed / "checkpoints" / "last.ckpt"
        if last.exists():  # what is there is whole: the last periodic checkpoint before the kill
            saved = load_ckpt(last)["global_step"]
            assert saved % SAVE_EVERY == 0 and saved < step, (plan, saved)
        if where == "save":  # the half-written temporary file the kill left
            assert [p for p in last.parent.iterdir() if p.name.endswith(".tmp")], plan
    monkeypatch.delenv("DIFFROP_KILL_AT")
    rc, out = _finish(_popen(killed, *FAULT))
    assert rc == 0, out
    assert_same_final(full, killed)
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["last.ckpt"]  # stale temps removed


def _eval_popen(ckpt: Path, out: Path, weights: Path) -> subprocess.Popen:
    from diffrop.paper.smoke import SMOKE_EVAL

    args = [f"ckpt_path={ckpt}", f"hydra.run.dir={out}", f"eval.reference_cache={out / 'refs'}", *SMOKE_EVAL,
            "eval.extractor=fid-helper", f"eval.inception_weights={weights}", "eval.num_samples=60",
            "eval.shard_size=10", "sampler.steps=10", "sampler.batch_size=10", "device=cpu"]  # fmt: skip
    cmd = [sys.executable, str(REPO / "src" / "eval.py"), *args]
    return subprocess.Popen(
        cmd, cwd=REPO, env=train_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0])
def test_random_sigkills_during_generation_and_scoring_give_the_same_evaluation(tmp_path, seed):
    """An evaluation SIGKILLed while drawing shards (after a random number of them) and again once the samples
    are merged (grid, features, scores), re-run with the same command, draws the same samples and scores."""
    import json
    import random

    import numpy as np

    from diffrop.paper.smoke import write_smoke_extractor

    rng = random.Random(seed)
    run = tmp_path / "run"
    train_in_process([*TINY_RUN_OVERRIDES, "trainer.max_steps=2"], run)
    ckpt, weights = run / "checkpoints" / "last.ckpt", write_smoke_extractor(tmp_path / "features.pt")
    full, killed = tmp_path / "eval_full", tmp_path / "eval_killed"
    rc, out = _finish(_eval_popen(ckpt, full, weights))
    assert rc == 0, out

    samples = next(full.glob("samples/step*/*/samples.npz")).relative_to(full)
    triggers = [samples.parent / f"shard_{rng.randrange(1, 5):05d}.npz", samples]  # in generation; after it
    for trigger in triggers:
        proc = _eval_popen(ckpt, killed, weights)
        _wait_for(killed / trigger, proc)
        time.sleep(rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, f"the evaluation ended before the kill after {trigger}"
    rc, out = _finish(_eval_popen(ckpt, killed, weights))
    assert rc == 0, out

    a, b = np.load(full / samples), np.load(killed / samples)
    assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
    ra, rb = (json.loads(results_path(d).read_text()) for d in (full, killed))
    assert ra["metrics"] == rb["metrics"] and ra["label_counts"] == rb["label_counts"]
