"""Pending SLURM jobs that can never start: classify squeue's pending reason and say which setting to change.

The submitter of `hydra/launcher=slurm` (diffrop.slurm.launch) waits on its jobs; a job whose request no
node, partition, QOS or account can ever satisfy stays PENDING forever. `watch_pending` polls
`squeue -h -r -j <ids>` every few seconds while any job of the sweep is pending; when one is pending with a
reason that never clears (`never_starts`) on two polls in a row, it cancels the sweep's jobs and raises
`JobCannotStart`, whose message is one line naming the job, the reason, what the cluster allows and the
`hydra.launcher.*` setting to change. Transient reasons (Resources, Priority, BeginTime, Dependency,
JobArrayTaskLimit, QOSGrp*, ...) keep it waiting. Everything but `watch_pending` is a pure function of text.
"""

from __future__ import annotations

import logging
import re
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# squeue -o: job id | state | reason code | partition | min CPUs per node | nodes | min memory (MB) |
# time limit | reason text, e.g. "(ReqNodeNotAvail, UnavailableNodes:n1)" (last: it may hold anything)
SQUEUE_FORMAT = "%i|%T|%r|%P|%c|%D|%m|%l|%R"
# sinfo -o, one line per node configuration: CPUs per node | memory per node (MB) | nodes | MaxTime | gres
SINFO_FORMAT = "%c|%m|%D|%l|%G"

# Reasons that no amount of waiting clears: the request itself is outside what the cluster will ever give.
NEVER = {
    "PartitionConfig": "the request exceeds what partition {partition} allows",
    "PartitionNodeLimit": "the number of nodes is outside the limits of partition {partition}",
    "PartitionTimeLimit": "the time limit exceeds the MaxTime of partition {partition}",
    "BadConstraints": "no node of partition {partition} satisfies the job's constraints",
    "InvalidAccount": "the account is not valid for this user",
    "AccountNotAllowed": "the account may not use partition {partition}",
    "InvalidQOS": "the QOS is not valid for this user or account",
    "QOSNotAllowed": "the QOS may not use partition {partition}",
    "DependencyNeverSatisfied": "a job it depends on failed, so its dependency can never be met",
}
# QOSMax*/AssocMax* per job or per node (e.g. QOSMaxCpuPerJobLimit, AssocMaxWallDurationPerJobLimit): one job's
# request exceeds a limit; QOSMin*: it falls short of a minimum. Per user/account and Grp* limits are
# aggregates that clear when other jobs end, so they stay transient.
_PER_JOB_LIMIT = re.compile(r"^(QOS|Assoc)Max\w*Per(Job|Node)\w*$|^QOSMin\w+$")


@dataclass(frozen=True)
class QueuedJob:
    """One row of `squeue -h -r -o SQUEUE_FORMAT`."""

    job_id: str
    state: str
    reason: str
    partition: str = ""
    min_cpus_per_node: int | None = None
    nodes: int | None = None
    min_memory_mb: int | None = None
    time_limit: str = ""
    reason_text: str = ""


@dataclass(frozen=True)
class PartitionLimits:
    """What the largest node of a partition offers (`sinfo -p`), and its time limit."""

    cpus_per_node: int | None = None
    memory_mb_per_node: int | None = None
    nodes: int | None = None
    max_time: str = ""
    gpus_per_node: int | None = None  # None: unknown; 0: no GPU gres


def _int(text: str) -> int | None:
    match = re.match(r"\s*(\d+)", text)
    return int(match.group(1)) if match else None


def parse_squeue(text: str) -> list[QueuedJob]:
    """Rows of `squeue -h -r -o SQUEUE_FORMAT`; lines that do not parse are skipped."""
    jobs = []
    for line in text.splitlines():
        fields = line.strip().split("|", 8)
        if len(fields) < 3 or not fields[0]:
            continue
        fields += [""] * (9 - len(fields))
        job_id, state, reason, partition, cpus, nodes, memory, limit, text_ = fields
        jobs.append(
            QueuedJob(
                job_id=job_id,
                state=state,
                reason=reason,
                partition=partition,
                min_cpus_per_node=_int(cpus),
                nodes=_int(nodes),
                min_memory_mb=_int(memory) or None,  # 0: no memory requested
                time_limit=limit,
                reason_text=text_.strip().strip("()"),
            )
        )
    return jobs


def parse_sinfo(text: str) -> PartitionLimits:
    """The largest node configuration among `sinfo -h -p P -o SINFO_FORMAT` lines, and the node count."""
    cpus, memory, gpus, nodes, max_time = [], [], [], 0, ""
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) < 5:
            continue
        c, m, d, limit, gres = fields[:5]
        if _int(c) is not None:
            cpus.append(_int(c))
        if _int(m) is not None:
            memory.append(_int(m))
        nodes += _int(d) or 0
        max_time = max_time or limit
        gpus.append(sum(int(n) for n in re.findall(r"gpu(?::[^:,(]+)?:(\d+)", gres)))
    if not (cpus or memory or nodes):
        return PartitionLimits()
    return PartitionLimits(
        cpus_per_node=max(cpus, default=None),
        memory_mb_per_node=max(memory, default=None),
        nodes=nodes or None,
        max_time=max_time,
        gpus_per_node=max(gpus, default=None),
    )


def slurm_minutes(text: str) -> float | None:
    """A Slurm duration ("30", "30:00", "2:00:00", "1-12:00:00", "infinite") in minutes; None if unlimited."""
    text = text.strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not match:
        return None
    days, a, b, c = match.groups()
    if days is not None:  # D-H[:M[:S]]
        hours, minutes, seconds = int(a), int(b or 0), int(c or 0)
    elif c is not None:  # H:M:S
        hours, minutes, seconds = int(a), int(b), int(c)
    elif b is not None:  # M:S
        hours, minutes, seconds = 0, int(a), int(b)
    else:  # M
        hours, minutes, seconds = 0, int(a), 0
    return int(days or 0) * 1440 + hours * 60 + minutes + seconds / 60


def never_starts(job: QueuedJob) -> bool:
    """True when a PENDING job's reason means it can never start as submitted."""
    if job.state != "PENDING":
        return False
    if job.reason in NEVER or _PER_JOB_LIMIT.match(job.reason):
        return True
    # ReqNodeNotAvail is transient (nodes down, drained, reserved) unless it names no node at all.
    if job.reason == "ReqNodeNotAvail":
        unavailable = re.search(r"UnavailableNodes:(\S*)", job.reason_text)
        return unavailable is not None and not unavailable.group(1)
    return False


def _gib(mb: int) -> str:
    return f"{mb / 1024:g} GB"


def _limit_fixes(job: QueuedJob, params: Mapping[str, Any], limits: PartitionLimits) -> tuple[list, list]:
    """(what exceeds the partition, the settings to change) from the launcher params and the partition."""
    exceeded, fixes = [], []
    cpus_per_task = params.get("cpus_per_task") or 1
    tasks = params.get("tasks_per_node") or 1
    cpus = job.min_cpus_per_node or cpus_per_task * tasks
    if limits.cpus_per_node is not None and cpus > limits.cpus_per_node:
        per_task = f"cpus_per_task={cpus_per_task}" + (f" x tasks_per_node={tasks}" if tasks > 1 else "")
        exceeded.append(f"{per_task} > {limits.cpus_per_node} CPUs per node")
        fixes.append("hydra.launcher.cpus_per_task")
    mem_gb = params.get("mem_gb")
    if mem_gb and limits.memory_mb_per_node is not None and mem_gb * 1024 > limits.memory_mb_per_node:
        exceeded.append(f"mem_gb={mem_gb} > {_gib(limits.memory_mb_per_node)} per node")
        fixes.append("hydra.launcher.mem_gb")
    gpus = params.get("gpus_per_node")
    if gpus and limits.gpus_per_node is not None and gpus > limits.gpus_per_node:
        exceeded.append(f"gpus_per_node={gpus} > {limits.gpus_per_node} GPUs per node")
        fixes.append("hydra.launcher.gpus_per_node (trainer.devices)")
    nodes = params.get("nodes") or job.nodes or 1
    if limits.nodes is not None and nodes > limits.nodes:
        exceeded.append(f"nodes={nodes} > {limits.nodes} nodes")
        fixes.append("trainer.num_nodes")
    max_minutes = slurm_minutes(limits.max_time)
    timeout = params.get("timeout_min")
    if timeout and max_minutes is not None and timeout > max_minutes:
        exceeded.append(f"timeout_min={timeout} > MaxTime {limits.max_time}")
        fixes.append("hydra.launcher.timeout_min")
    return exceeded, fixes


def _resource_setting(reason: str) -> str:
    """The launcher key behind a QOS/association per-job limit reason."""
    for word, setting in (
        ("WallDuration", "hydra.launcher.timeout_min"),
        ("Cpu", "hydra.launcher.cpus_per_task"),
        ("Mem", "hydra.launcher.mem_gb"),
        ("GRES", "hydra.launcher.gpus_per_node (trainer.devices)"),
        ("Node", "trainer.num_nodes"),
    ):
        if word in reason:
            return setting
    return "the request (hydra.launcher.*)"


def never_start_message(
    job: QueuedJob,
    params: Mapping[str, Any],
    limits: PartitionLimits | None = None,
    others: int = 0,
) -> str:
    """One line: which job can never start, why, what the cluster allows, and the setting to change."""
    limits = limits or PartitionLimits()
    partition = f"'{job.partition}'" if job.partition else "(default)"
    reason = job.reason
    what = NEVER.get(reason, "").format(partition=partition)
    exceeded, fixes = _limit_fixes(job, params, limits)
    other_partition = "pick another hydra.launcher.partition"
    if reason in ("PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit"):
        if reason == "PartitionNodeLimit":
            exceeded = [e for e in exceeded if e.startswith("nodes=")] or exceeded
            fixes = ["trainer.num_nodes"]
        elif reason == "PartitionTimeLimit":
            exceeded = [e for e in exceeded if e.startswith("timeout_min=")] or exceeded
            fixes = ["hydra.launcher.timeout_min"]
        elif not fixes:
            fixes = [
                "hydra.launcher.cpus_per_task/mem_gb/gpus_per_node, trainer.num_nodes "
                f"(see `scontrol show partition {job.partition or ''}`)".replace(" )", ")")
            ]
        if exceeded:
            what += ", e.g. " + "; ".join(exceeded)
        fix = f"lower {' and '.join(fixes)} or {other_partition}"
    elif reason == "BadConstraints":
        fix = (
            "change +hydra.launcher.additional_parameters.constraint (or gpus_per_node) to features "
            f"the nodes have (`sinfo -p {job.partition} -o '%N %f %G'`) or {other_partition}"
        )
    elif reason in ("InvalidAccount", "AccountNotAllowed"):
        fix = "set hydra.launcher.account to an account of yours (`sacctmgr show assoc user=$USER`)"
        if reason == "AccountNotAllowed":
            fix += f" or {other_partition}"
    elif reason in ("InvalidQOS", "QOSNotAllowed"):
        fix = "set hydra.launcher.qos to a QOS of yours (`sacctmgr show assoc user=$USER format=qos`)"
        if reason == "QOSNotAllowed":
            fix += f" or {other_partition}"
    elif reason == "DependencyNeverSatisfied":
        fix = "resubmit without the failed dependency (hydra.launcher.additional_parameters.dependency)"
    elif reason == "ReqNodeNotAvail":
        what = "no node it asks for exists"
        fix = "drop or fix nodelist/exclude in hydra.launcher.additional_parameters, or " + other_partition
    else:  # QOSMax*/AssocMax* per job or node, QOSMin*
        kind = "QOS" if reason.startswith("QOS") else "association (account)"
        side = "is below a minimum" if reason.startswith("QOSMin") else "exceeds a per-job limit"
        what = f"the request {side} of its {kind}"
        fix = f"change {_resource_setting(reason)} (`sacctmgr show qos` lists the limits)"
    also = f" (and {others} more job{'s' if others > 1 else ''} of this sweep)" if others else ""
    return f"SLURM job {job.job_id}{also} can never start ({reason}: {what}); {fix}"


class JobCannotStart(SystemExit):
    """A job of the sweep can never start; the submitter exits 1 with this one-line message on stderr."""


Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _run(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), capture_output=True, text=True, timeout=60, check=False)


def _array_ids(job_ids: Sequence[str]) -> list[str]:
    return sorted({str(j).split("_")[0] for j in job_ids}, key=lambda s: (len(s), s))


def partition_limits(partition: str, run: Runner = _run) -> PartitionLimits:
    """`sinfo` of the partition; empty limits when it cannot be read."""
    try:
        out = run(["sinfo", "-h", "-p", partition, "-o", SINFO_FORMAT])
    except (OSError, subprocess.SubprocessError):
        return PartitionLimits()
    return parse_sinfo(out.stdout) if out.returncode == 0 else PartitionLimits()


def cancel(job_ids: Sequence[str], run: Runner = _run, sleep: Callable[[float], None] = time.sleep) -> None:
    """scancel the jobs (whole arrays) and wait up to 30 s until squeue no longer lists them."""
    arrays = _array_ids(job_ids)
    run(["scancel", *arrays])
    for _ in range(30):
        out = run(["squeue", "-h", "-r", "-j", ",".join(arrays), "-o", "%i|%T"])
        if out.returncode != 0 or not out.stdout.strip():
            return
        sleep(1.0)


def watch_pending(
    job_ids: Sequence[str],
    params: Mapping[str, Any],
    interval_s: float = 10.0,
    confirm: int = 2,
    run: Runner = _run,
    sleep: Callable[[float], None] = time.sleep,
    max_errors: int = 5,
) -> None:
    """Poll squeue until no job of `job_ids` is pending; raise JobCannotStart (after cancelling them all) when
    one is pending for a reason that never clears on `confirm` polls in a row.

    Returns when every job runs or has left the queue, or when squeue keeps failing (`max_errors` polls in
    a row); the caller then waits for the results as before.
    """
    arrays = _array_ids(job_ids)
    strikes: dict[str, int] = {}
    errors = 0
    seen_reasons: set[str] = set()
    while True:
        try:
            out = run(["squeue", "-h", "-r", "-j", ",".join(arrays), "-o", SQUEUE_FORMAT])
        except (OSError, subprocess.SubprocessError) as err:
            out = subprocess.CompletedProcess([], 1, "", str(err))
        if out.returncode != 0:
            if "Invalid job id" in out.stderr:
                return  # gone from the queue already
            errors += 1
            if errors >= max_errors:
                log.warning("squeue keeps failing (%s); no longer checking pending jobs", out.stderr.strip())
                return
            sleep(interval_s)
            continue
        errors = 0
        pending = [j for j in parse_squeue(out.stdout) if j.state == "PENDING"]
        if not pending:
            return
        for reason in sorted({j.reason for j in pending} - seen_reasons - {"None"}):
            log.info("SLURM jobs of the sweep pending (%s)", reason)
            seen_reasons.add(reason)
        blocked = [j for j in pending if never_starts(j)]
        strikes = {j.job_id: strikes.get(j.job_id, 0) + 1 for j in blocked}
        confirmed = [j for j in blocked if strikes[j.job_id] >= confirm]
        if confirmed:
            job = confirmed[0]
            limits = partition_limits(job.partition, run) if job.partition else PartitionLimits()
            message = never_start_message(job, params, limits, others=len(blocked) - 1)
            cancel(arrays, run, sleep)
            raise JobCannotStart(f"{message} (cancelled: scancel {' '.join(arrays)})")
        sleep(interval_s)
