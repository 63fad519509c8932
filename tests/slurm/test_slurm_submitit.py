"""submitit jobs really run on the local SLURM cluster and see the SLURM task environment.

The job functions are defined inside the tests so cloudpickle ships them by value: the test module
itself is not importable inside the job's Python.
"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.slurm


def test_submitit_job_returns_value(submitit_executor: Any, wait_result: Any) -> None:
    def sum_of_squares(n: int) -> tuple[int, str, str]:
        import os

        return sum(i * i for i in range(n)), os.environ["SLURM_JOB_ID"], os.environ["SLURM_JOB_PARTITION"]

    n = 1000
    job = submitit_executor.submit(sum_of_squares, n)
    total, job_id, partition = wait_result(job)
    assert total == (n - 1) * n * (2 * n - 1) // 6  # closed form of sum_{i<n} i^2
    assert job_id == str(job.job_id)
    assert partition == "debug"


def test_submitit_two_tasks_get_distinct_ranks(submitit_executor: Any, wait_result: Any) -> None:
    def rank_info() -> tuple[int, int, int]:
        import os

        env = os.environ
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env["SLURM_LOCALID"])

    submitit_executor.update_parameters(tasks_per_node=2, nodes=1)
    job = submitit_executor.submit(rank_info)
    assert sorted(wait_result(job)) == [(0, 2, 0), (1, 2, 1)]
