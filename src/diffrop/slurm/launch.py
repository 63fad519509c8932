"""The launch of `hydra/launcher=slurm` (hydra_plugins.diffrop_slurm.SlurmLauncher): hydra-submitit-launcher's
own launch, plus a check between submitting the sweep and waiting on it. A job that can never start (e.g. more
CPUs per task than any node has) makes the submitter cancel the sweep and exit 1 with one line saying which
setting to change, instead of waiting forever (``pending``: the squeue parsing; docs/slurm.md).

DIFFROP_SLURM_PENDING_POLL_S sets the squeue interval (default 10 s); 0 turns the check off.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from diffrop.slurm.pending import watch_pending

POLL_ENV = "DIFFROP_SLURM_PENDING_POLL_S"
DEFAULT_POLL_S = 10.0


def poll_interval() -> float:
    value = os.environ.get(POLL_ENV, "").strip()
    return float(value) if value else DEFAULT_POLL_S


def launch_watching_pending(
    launch: Callable[[Sequence[Sequence[str]], int], Sequence[Any]],
    params: Mapping[str, Any],
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
) -> Sequence[Any]:
    """Run the plugin's `launch` (submit with AutoExecutor.map_array, then block on every job's result) with
    map_array wrapped so that the submitted jobs are watched while pending before that wait starts."""
    import submitit

    interval = poll_interval()
    if interval <= 0:
        return launch(job_overrides, initial_job_idx)
    submit = submitit.AutoExecutor.map_array

    def map_array(executor: Any, fn: Any, *iterable: Any) -> list[Any]:
        jobs = submit(executor, fn, *iterable)
        if executor.cluster == "slurm" and jobs:
            watch_pending([job.job_id for job in jobs], params, interval_s=interval)
        return jobs

    submitit.AutoExecutor.map_array = map_array  # type: ignore[method-assign]
    try:
        return launch(job_overrides, initial_job_idx)
    finally:
        submitit.AutoExecutor.map_array = submit  # type: ignore[method-assign]
