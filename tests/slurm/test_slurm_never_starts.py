"""A sweep whose jobs can never start (more CPUs per task than the node has) fails fast instead of hanging.

squeue shows such a job PENDING with reason PartitionConfig forever; the submitter of `hydra/launcher=slurm`
(hydra_plugins.diffrop_slurm, diffrop.slurm.pending) must cancel the sweep and exit non-zero with one
line naming the job, the reason, what the node has and the setting to change.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slurm

TIME_BOUND_S = 120  # Hydra startup + submission + two squeue polls 10 s apart, with room on a loaded box


def test_job_that_can_never_start_fails_fast_with_the_setting_to_change(
    slurm_cluster: Any, start_multirun: Any, tmp_path: Path
) -> None:
    sinfo = ["sinfo", "-h", "-p", slurm_cluster.partition, "-o", "%c"]
    node_cpus = subprocess.run(sinfo, capture_output=True, text=True, check=True).stdout.split()[0]
    sweep_dir = tmp_path / "never_starts"
    started = time.monotonic()
    run = start_multirun(sweep_dir, "hydra.launcher.cpus_per_task=999", "loss=ddpm,pcl_exp")
    code = run.wait(timeout_s=TIME_BOUND_S)
    elapsed = time.monotonic() - started
    output = run.output()

    assert code != 0, output
    assert elapsed < TIME_BOUND_S
    lines = [line for line in output.splitlines() if "can never start" in line]
    assert len(lines) == 1, output
    line = lines[0]
    match = re.match(
        r"SLURM job (\d+)_\d+ \(and 1 more job of this sweep\) can never start \(PartitionConfig: ", line
    )
    assert match, line
    assert f"cpus_per_task=999 > {node_cpus} CPUs per node" in line
    assert "lower hydra.launcher.cpus_per_task or pick another hydra.launcher.partition" in line
    assert output.rstrip().endswith(line), "the message is the submitter's last word"
    assert "Traceback" not in output

    array = match.group(1)
    assert (sweep_dir / ".submitit" / array).is_dir(), "the job named is the one this sweep submitted"
    queue = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i %T %r"], capture_output=True, text=True, check=True
    )
    left = [row for row in queue.stdout.splitlines() if row.split()[0].split("_")[0] == array]
    assert left == [], f"jobs of the sweep left in squeue: {left}"
