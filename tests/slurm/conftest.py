"""Fixtures for tests against the local one-node SLURM cluster (`scripts/local_slurm.sh`, docs/slurm.md).

Every test in this directory needs that cluster; when it is not up they are skipped with the command
that brings it up, so a plain `pytest` run on a machine without SLURM stays green.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.slurm_runs import cancel_sweep
from tests.helpers.train_utils import REPO, child_env

DEFAULT_DIR = "/tmp/diffrop-slurm"
PARTITION = "debug"
# Node states in which the cluster can run a job now or soon (sinfo %T, lower case).
READY_STATES = {"idle", "mixed", "allocated", "completing"}


@dataclass(frozen=True)
class SlurmCluster:
    """Where the local cluster's config lives and which partition to submit to."""

    conf: Path
    partition: str = PARTITION


def _conf_path() -> Path:
    if os.environ.get("SLURM_CONF"):
        return Path(os.environ["SLURM_CONF"])
    return Path(os.environ.get("DIFFROP_SLURM_DIR", DEFAULT_DIR)) / "etc" / "slurm.conf"


def _controller_reachable(conf: Path) -> bool:
    """Fast TCP probe of slurmctld, so a stale config costs ~0 s instead of sinfo's ~9 s of retries."""
    text = conf.read_text()
    host = re.search(r"^\s*SlurmctldHost\s*=\s*([^\s(]+)(?:\(([^)]+)\))?", text, re.MULTILINE | re.IGNORECASE)
    port = re.search(r"^\s*SlurmctldPort\s*=\s*(\d+)", text, re.MULTILINE | re.IGNORECASE)
    if host is None:
        return True  # unusual config (e.g. ControlMachine): let sinfo decide
    address = host.group(2) or host.group(1)
    try:
        with socket.create_connection((address, int(port.group(1)) if port else 6817), timeout=2):
            return True
    except OSError:
        return False


def _not_up(reason: str) -> None:
    pytest.skip(
        f"local SLURM cluster is not up ({reason}); start it with "
        "`sudo bash scripts/local_slurm.sh up` or run `make test-slurm`"
    )


@pytest.fixture(scope="session", autouse=True)
def slurm_cluster() -> Iterator[SlurmCluster]:
    """Check that `sinfo` sees a ready node and point SLURM_CONF (hence submitit/sbatch) at the cluster."""
    if shutil.which("sinfo") is None:
        _not_up("no `sinfo` on PATH")
    conf = _conf_path()
    if not conf.is_file():
        _not_up(f"no config at {conf}")
    if not _controller_reachable(conf):
        _not_up(f"no slurmctld answering for {conf}")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-p", PARTITION, "-o", "%T"],
            env=env,
            capture_output=True,
            text=True,
            timeout=20,
        )
    except subprocess.TimeoutExpired:
        _not_up("sinfo timed out")
    states = set(out.stdout.split())
    if out.returncode != 0 or not states & READY_STATES:
        detail = out.stderr.strip() or f"node states {sorted(states) or 'none'}"
        _not_up(f"sinfo on partition {PARTITION!r}: {detail}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(conf))
        yield SlurmCluster(conf=conf)


@pytest.fixture
def submitit_executor(slurm_cluster: SlurmCluster, tmp_path: Path) -> Any:
    """A submitit AutoExecutor on the local partition, logging under this test's tmp dir."""
    submitit = pytest.importorskip("submitit")
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit" / "%j")
    executor.update_parameters(slurm_partition=slurm_cluster.partition, timeout_min=5, cpus_per_task=1)
    return executor


def _wait_result(job: Any, timeout_s: float = 60.0) -> Any:
    """`job.result()` with a deadline: cancel the job and fail instead of hanging the test session.

    Accounting is off on the local cluster, so submitit's `sacct` polls fail ("Bypassing sacct
    error") and `job.state` stays UNKNOWN; `done()` still works because it looks for the result file.
    """
    deadline = time.monotonic() + timeout_s
    while not job.done():
        if time.monotonic() > deadline:
            job.cancel(check=False)
            pytest.fail(
                f"SLURM job {job.job_id} did not finish within {timeout_s:.0f} s; see {job.paths.folder}"
            )
        time.sleep(0.5)
    return job.results() if job.num_tasks > 1 else job.result()


@pytest.fixture
def wait_result() -> Callable[..., Any]:
    """`wait_result(job, timeout_s=60)`: the job's return value (a list, one per task, for multi-task
    jobs), or a test failure after the deadline."""
    return _wait_result


# The smallest real training run: tiny UNet on the bundled digits, CPU, CSV metrics, one row per step.
TINY_RUN = [
    "data=digits_lt",
    "model=tiny",
    "logger=csv",
    "data.batch_size=8",
    "trainer.log_every_n_steps=1",
    "~callbacks.sample_grid",
    "~callbacks.progress_bar",
    "~callbacks.model_summary",
]
# configs/hydra/launcher/slurm.yaml adapted to the local node: no GPUs, 2 CPUs, short time limit.
LOCAL_LAUNCHER = [
    "hydra/launcher=slurm",
    f"hydra.launcher.partition={PARTITION}",
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.timeout_min=15",
]


@dataclass
class Multirun:
    """A `python src/train.py -m hydra/launcher=slurm ...` started in the background."""

    sweep_dir: Path
    process: subprocess.Popen
    log: Path

    def wait(self, timeout_s: float) -> int:
        """Exit code of the Hydra submitter, which returns once every job of the sweep is done."""
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            cancel_sweep(self.sweep_dir)
            pytest.fail(
                f"sweep {self.sweep_dir} not done after {timeout_s:.0f} s; submitter log:\n{self.output()}"
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


@pytest.fixture(scope="module")
def start_multirun(slurm_cluster: SlurmCluster) -> Iterator[Callable[..., Multirun]]:
    """`start_multirun(sweep_dir, *overrides, trainer="cpu")`: a tiny training sweep through configs/hydra/launcher/slurm.yaml.

    Runs from the repository root with `child_env()` (the job inherits it) so test-only callbacks like
    `tests.helpers.rank_probe.RankProbe` import inside the job. Jobs left over at teardown are cancelled.
    """
    started: list[Multirun] = []

    def start(sweep_dir: Path, *overrides: str, trainer: str = "cpu") -> Multirun:
        sweep_dir = Path(sweep_dir)
        log = sweep_dir.parent / f"{sweep_dir.name}.submitter.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = child_env(HYDRA_FULL_ERROR="1")
        command = [
            sys.executable,
            "src/train.py",
            "-m",
            *LOCAL_LAUNCHER,
            *TINY_RUN,
            f"trainer={trainer}",
            f"hydra.sweep.dir={sweep_dir}",
        ]
        with log.open("w") as out:
            process = subprocess.Popen(
                [*command, *overrides], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        started.append(Multirun(sweep_dir, process, log))
        return started[-1]

    yield start
    for run in started:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()
        cancel_sweep(run.sweep_dir)
