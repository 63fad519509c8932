"""Helpers for the SLURM tests: a sweep's job ids, cleanup, and the rows of a run's metrics.csv."""

from __future__ import annotations

import csv
import re
import subprocess
from pathlib import Path


def sweep_job_ids(sweep_dir: Path) -> list[str]:
    """SLURM job ids of a hydra-submitit sweep: the `<sweep>/.submitit/<jobid>` folders with job logs in them.

    A sweep is one array job: ids `<array>_<index>`; the plain `<array>` folder holds only the sbatch script.
    """
    folder = Path(sweep_dir) / ".submitit"
    dirs = [p for p in folder.iterdir() if re.fullmatch(r"\d+(_\d+)?", p.name)] if folder.is_dir() else []
    return sorted(p.name for p in dirs if any(p.glob("*_log.out")))


def cancel_sweep(sweep_dir: Path) -> None:
    """scancel every job a sweep submitted (cleanup after a test timed out)."""
    folder = Path(sweep_dir) / ".submitit"
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    ids = {n.split("_")[0] for n in names if re.fullmatch(r"\d+(_\d+)?", n)}
    if ids:
        subprocess.run(["scancel", *sorted(ids)], capture_output=True, check=False)


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with (Path(run_dir) / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def loss_steps(run_dir: Path) -> list[int]:
    """The `step` of every metrics.csv row that carries train/loss, in file order."""
    return [int(r["step"]) for r in read_metrics(run_dir) if r.get("train/loss")]
