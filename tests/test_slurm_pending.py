"""Pending SLURM jobs that can never start (diffrop.slurm.pending): reason classification, the one-line
message, and the watch loop against fake squeue/sinfo/scancel output (no cluster needed)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

import pytest

from diffrop.slurm import launch as slurm_launch
from diffrop.slurm.pending import (
    JobCannotStart,
    PartitionLimits,
    QueuedJob,
    never_start_message,
    never_starts,
    parse_sinfo,
    parse_squeue,
    slurm_minutes,
    watch_pending,
)

PARAMS = {"cpus_per_task": 999, "tasks_per_node": 1, "nodes": 1, "gpus_per_node": None, "timeout_min": 15}
# squeue -h -r -j 12 -o SQUEUE_FORMAT on the local one-node cluster (2 CPUs) for cpus_per_task=999
BLOCKED = "12_0|PENDING|PartitionConfig|debug|999|1|0|15:00|(PartitionConfig)\n" + (
    "12_1|PENDING|PartitionConfig|debug|999|1|0|15:00|(PartitionConfig)\n"
)
SINFO = "2|22900|1|infinite|(null)\n"


def pending(reason: str, text: str = "") -> QueuedJob:
    return QueuedJob("7", "PENDING", reason, "gpu", reason_text=text or reason)


def test_parse_squeue_rows():
    jobs = parse_squeue(BLOCKED + "13|RUNNING|None|debug|1|1|4096|1-00:00:00|vm\n\n")
    assert [j.job_id for j in jobs] == ["12_0", "12_1", "13"]
    assert jobs[0] == QueuedJob(
        "12_0", "PENDING", "PartitionConfig", "debug", 999, 1, None, "15:00", "PartitionConfig"
    )
    assert jobs[2].min_memory_mb == 4096 and jobs[2].reason_text == "vm"


def test_parse_sinfo_takes_the_largest_node_and_counts_nodes():
    limits = parse_sinfo("32|256000|4|2-00:00:00|gpu:a100:4\n64+|512000|2|2-00:00:00|gpu:8(S:0-1)\n")
    assert limits == PartitionLimits(64, 512000, 6, "2-00:00:00", 8)
    assert parse_sinfo(SINFO) == PartitionLimits(2, 22900, 1, "infinite", 0)
    assert parse_sinfo("") == PartitionLimits()


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("30", 30), ("30:00", 30), ("2:00:00", 120), ("1-12:00:00", 2160), ("1-2", 1560), ("infinite", None)],
)
def test_slurm_minutes(text, minutes):
    assert slurm_minutes(text) == minutes


@pytest.mark.parametrize(
    "reason",
    [
        "PartitionConfig",
        "PartitionNodeLimit",
        "PartitionTimeLimit",
        "BadConstraints",
        "InvalidAccount",
        "InvalidQOS",
        "AccountNotAllowed",
        "DependencyNeverSatisfied",
        "QOSMaxCpuPerJobLimit",
        "QOSMaxGRESPerJob",
        "QOSMaxNodePerJobLimit",
        "QOSMaxWallDurationPerJobLimit",
        "QOSMaxMemoryPerNode",
        "AssocMaxCpuPerJobLimit",
        "QOSMinCpuNotSatisfied",
    ],
)
def test_reasons_that_never_clear(reason):
    assert never_starts(pending(reason))


@pytest.mark.parametrize(
    "reason",
    [
        "Resources",
        "Priority",
        "BeginTime",
        "Dependency",
        "None",
        "JobArrayTaskLimit",
        "JobHeldUser",
        "PartitionDown",
        "QOSGrpCpuLimit",
        "AssocGrpGRES",
        "QOSMaxCpuPerUserLimit",
        "MaxCpuPerAccount",
        "ReqNodeNotAvail",
    ],
)
def test_transient_reasons_keep_waiting(reason):
    assert not never_starts(pending(reason))


def test_req_node_not_avail_never_clears_only_without_any_node():
    assert never_starts(pending("ReqNodeNotAvail", "ReqNodeNotAvail, UnavailableNodes:"))
    assert not never_starts(pending("ReqNodeNotAvail", "ReqNodeNotAvail, UnavailableNodes:n[1-4]"))
    assert not never_starts(pending("ReqNodeNotAvail", "ReqNodeNotAvail, May be reserved for other job"))
    assert not never_starts(QueuedJob("7", "RUNNING", "PartitionConfig"))


def test_message_names_job_reason_limit_and_setting():
    job = parse_squeue(BLOCKED)[0]
    message = never_start_message(job, PARAMS, parse_sinfo(SINFO), others=1)
    assert message == (
        "SLURM job 12_0 (and 1 more job of this sweep) can never start (PartitionConfig: the request exceeds "
        "what partition 'debug' allows, e.g. cpus_per_task=999 > 2 CPUs per node); lower "
        "hydra.launcher.cpus_per_task or pick another hydra.launcher.partition"
    )
    assert "\n" not in message


def test_message_per_task_cpus_times_tasks_and_memory():
    job = QueuedJob("5", "PENDING", "PartitionConfig", "gpu", min_cpus_per_node=32)
    params = {**PARAMS, "cpus_per_task": 8, "tasks_per_node": 4, "mem_gb": 600}
    message = never_start_message(job, params, PartitionLimits(16, 512000, 4, "2-00:00:00", 4))
    assert "cpus_per_task=8 x tasks_per_node=4 > 16 CPUs per node" in message
    assert "mem_gb=600 > 500 GB per node" in message
    assert "lower hydra.launcher.cpus_per_task and hydra.launcher.mem_gb or pick another" in message


def test_message_without_partition_limits_still_names_the_settings():
    message = never_start_message(QueuedJob("5", "PENDING", "PartitionConfig", "gpu"), PARAMS)
    assert message.startswith(
        "SLURM job 5 can never start (PartitionConfig: the request exceeds what partition"
    )
    assert "hydra.launcher.cpus_per_task/mem_gb/gpus_per_node, trainer.num_nodes" in message
    assert "scontrol show partition gpu" in message


@pytest.mark.parametrize(
    ("reason", "limits", "params", "expected"),
    [
        (
            "PartitionTimeLimit",
            PartitionLimits(max_time="2:00:00"),
            {"timeout_min": 1440},
            "timeout_min=1440 > MaxTime 2:00:00); lower hydra.launcher.timeout_min",
        ),
        (
            "PartitionNodeLimit",
            PartitionLimits(nodes=2),
            {"nodes": 4},
            "nodes=4 > 2 nodes); lower trainer.num_nodes",
        ),
        ("BadConstraints", None, {}, "change +hydra.launcher.additional_parameters.constraint"),
        ("InvalidAccount", None, {}, "set hydra.launcher.account"),
        ("InvalidQOS", None, {}, "set hydra.launcher.qos"),
        ("QOSMaxCpuPerJobLimit", None, {}, "per-job limit of its QOS); change hydra.launcher.cpus_per_task"),
        ("AssocMaxWallDurationPerJobLimit", None, {}, "change hydra.launcher.timeout_min"),
        ("QOSMaxGRESPerJob", None, {}, "change hydra.launcher.gpus_per_node"),
        ("QOSMaxNodePerJobLimit", None, {}, "change trainer.num_nodes"),
    ],
)
def test_message_setting_per_reason(reason, limits, params, expected):
    assert expected in never_start_message(pending(reason), params, limits)


class FakeSlurm:
    """Answers squeue/sinfo/scancel from canned outputs and records the calls."""

    def __init__(self, squeue: Sequence[str], squeue_rc: int = 0, stderr: str = ""):
        self.squeue = list(squeue)
        self.squeue_rc = squeue_rc
        self.stderr = stderr
        self.calls: list[list[str]] = []
        self.cancelled = False

    def __call__(self, command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        command = list(command)
        self.calls.append(command)
        out, rc, err = "", 0, ""
        if command[0] == "scancel":
            self.cancelled = True
        elif command[0] == "sinfo":
            out = SINFO
        elif command[0] == "squeue":
            if self.cancelled:
                out = ""
            else:
                out = self.squeue.pop(0) if len(self.squeue) > 1 else self.squeue[0]
                rc, err = self.squeue_rc, self.stderr
        return subprocess.CompletedProcess(command, rc, out, err)


def test_watch_cancels_and_exits_with_the_message_after_two_polls():
    slurm, sleeps = FakeSlurm(["12_0|PENDING|None|debug|999|1|0|15:00|(None)\n", BLOCKED]), []
    with pytest.raises(JobCannotStart) as raised:
        watch_pending(["12_0", "12_1"], PARAMS, interval_s=3, run=slurm, sleep=sleeps.append)
    assert raised.value.code.startswith("SLURM job 12_0 (and 1 more job of this sweep) can never start")
    assert raised.value.code.endswith("(cancelled: scancel 12)")
    assert ["scancel", "12"] in slurm.calls
    assert sum(c[0] == "squeue" for c in slurm.calls) == 4  # None, blocked, blocked (confirmed), gone
    assert sleeps == [3, 3]
    assert slurm.calls[0] == ["squeue", "-h", "-r", "-j", "12", "-o", "%i|%T|%r|%P|%c|%D|%m|%l|%R"]


def test_watch_keeps_waiting_on_transient_reasons_until_jobs_run():
    waiting = "3_0|PENDING|Resources|debug|1|1|0|15:00|(Resources)\n3_1|PENDING|Priority|debug|1|1|0|15:00|(Priority)\n"
    running = "3_0|RUNNING|None|debug|1|1|0|15:00|vm\n3_1|RUNNING|None|debug|1|1|0|15:00|vm\n"
    slurm, sleeps = FakeSlurm([waiting] * 5 + [running]), []
    watch_pending(["3_0", "3_1"], PARAMS, interval_s=10, run=slurm, sleep=sleeps.append)
    assert sleeps == [10] * 5
    assert not slurm.cancelled


def test_watch_gives_up_when_squeue_fails_or_jobs_are_gone():
    gone = FakeSlurm([""], squeue_rc=1, stderr="slurm_load_jobs error: Invalid job id specified")
    watch_pending(["3"], PARAMS, run=gone, sleep=lambda s: None)
    broken = FakeSlurm([""], squeue_rc=1, stderr="Unable to contact slurm controller")
    watch_pending(["3"], PARAMS, run=broken, sleep=lambda s: None, max_errors=3)
    assert len(broken.calls) == 3 and not broken.cancelled


def test_launch_watches_only_while_the_plugin_submits(monkeypatch):
    submitit = pytest.importorskip("submitit")
    watched = []
    monkeypatch.setattr(slurm_launch, "watch_pending", lambda ids, params, interval_s: watched.append(ids))

    class Job:
        job_id = "9_0"

    class Executor:
        cluster = "slurm"

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", lambda self, fn, *iterable: [Job()])
    submit = submitit.AutoExecutor.map_array

    def launch(job_overrides, initial_job_idx):
        # what hydra-submitit-launcher's launch does: executor.map_array(...), then wait on the results
        assert submitit.AutoExecutor.map_array is not submit
        return submitit.AutoExecutor.map_array(Executor(), print, [1])

    result = slurm_launch.launch_watching_pending(launch, PARAMS, [["a=1"]], 0)
    assert [j.job_id for j in result] == ["9_0"]
    assert watched == [["9_0"]]
    assert submitit.AutoExecutor.map_array is submit  # restored after the launch

    monkeypatch.setenv(slurm_launch.POLL_ENV, "0")  # check turned off: the plugin's launch alone
    watched.clear()
    assert slurm_launch.launch_watching_pending(lambda o, i: ["plain"], PARAMS, [], 0) == ["plain"]
    assert watched == []
