"""Pre-emption on the local cluster: SIGUSR1 (what a cluster sends before the time limit) -> checkpoint,
requeue, resume in the same run dir, and the same final step as an uninterrupted twin.

The path (docs/slurm.md, "Pre-emption and requeue"): Lightning's SLURMEnvironment(auto_requeue=True) handles
SIGUSR1 in the training process: it writes <run dir>/hpc_ckpt_1.ckpt and runs `scontrol requeue`. Slurm's
SIGTERM for the requeue makes the run save checkpoints/last.ckpt (diffrop.training.callbacks.CheckpointOnInterrupt)
and exit without a submitit result, so the submitter keeps waiting. The requeued job (same job id) re-runs
the same Hydra job in the same run dir, and ckpt_path=auto resumes from last.ckpt.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers.rank_probe import weights_sha256
from tests.helpers.slurm_runs import loss_steps

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

MAX_STEPS = 40
EVERY = 5  # periodic checkpoint: its first appearance tells the test that training is under way


def _wait_for(path: Path, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: {path} did not appear within {timeout_s:.0f} s")
        time.sleep(0.5)


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def test_sigusr1_requeues_and_resumes_to_the_same_final_step(start_multirun: Any, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "preempt"
    run = start_multirun(
        sweep_dir,
        f"trainer.max_steps={MAX_STEPS}",
        f"callbacks.checkpoint.every_n_train_steps={EVERY}",
        "+variant=interrupted,uninterrupted",  # two identical runs; only the first is signalled
        "hydra.sweep.subdir=${variant}",
    )
    interrupted, twin = sweep_dir / "interrupted", sweep_dir / "uninterrupted"
    _wait_for(interrupted / "checkpoints" / "last.ckpt", 300, "first periodic checkpoint")
    job_id = json.loads((interrupted / "job.json").read_text())["slurm_job_id"]
    # Plain `scancel --signal` reaches the srun step (the training process), not the batch shell.
    subprocess.run(["scancel", "--signal=USR1", job_id], check=True)

    assert run.wait(timeout_s=600) == 0, run.output()
    job = json.loads((interrupted / "job.json").read_text())
    assert (job["slurm_job_id"], job["restarts"]) == (job_id, "1"), "requeued once, same job id and run dir"
    assert json.loads((twin / "job.json").read_text())["restarts"] == "0"

    hpc = _load(interrupted / "hpc_ckpt_1.ckpt")["global_step"]  # Lightning's SIGUSR1 checkpoint
    assert EVERY <= hpc < MAX_STEPS, f"signal handled at step {hpc}, expected mid-run"
    logs = Path(job["log"]).read_text() + Path(job["log"]).with_suffix(".out").read_text()
    assert f"Restoring states from the checkpoint path at {interrupted}/checkpoints/last.ckpt" in logs

    final, expected = (
        _load(interrupted / "checkpoints" / "last.ckpt"),
        _load(twin / "checkpoints" / "last.ckpt"),
    )
    assert final["global_step"] == expected["global_step"] == MAX_STEPS
    # Resuming restores weights, optimizer, EMA and RNG states, and batches are a function of the step: the
    # interrupted run ends bitwise where the uninterrupted one does.
    assert weights_sha256(final["state_dict"]) == weights_sha256(expected["state_dict"])
    # metrics.csv continues across the restart: every step once, no gap, no repeat.
    assert loss_steps(interrupted) == loss_steps(twin) == list(range(MAX_STEPS))
    assert not (interrupted / "FAILED").exists()
