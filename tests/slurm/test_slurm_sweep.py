"""A Hydra sweep through configs/hydra/launcher/slurm.yaml on the local cluster: one SLURM job per point.

One sweep of four points serves both tests: loss=ddpm,pcl_exp x tau.tau0=1.0,-1. tau0=-1 is invalid, but only
PCL builds tau, so exactly one point (pcl_exp, tau0=-1) fails while the three others must train to the end.
The sweep dir is <runs root>/<table>/<cell>, the layout the table renderer (diffrop.paper.report) reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from diffrop.paper.report import report
from tests.helpers.slurm_runs import loss_steps, sweep_job_ids

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TABLE = "slurm_sweep"
MAX_STEPS = 3
OK_CELLS = ["ddpm__tau1.0", "pcl_exp__tau1.0", "ddpm__tau-1"]
BAD_CELL = "pcl_exp__tau-1"


@dataclass(frozen=True)
class Sweep:
    runs_root: Path
    sweep_dir: Path
    exit_code: int
    output: str


@pytest.fixture(scope="module")
def sweep(start_multirun: Any, tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    runs_root = tmp_path_factory.mktemp("runs")
    run = start_multirun(
        runs_root / TABLE,
        f"trainer.max_steps={MAX_STEPS}",
        "loss=ddpm,pcl_exp",
        "tau.tau0=1.0,-1",
        "hydra.sweep.subdir=${hydra:runtime.choices.loss}__tau${tau.tau0}",
    )
    code = run.wait(timeout_s=900)
    return Sweep(runs_root, runs_root / TABLE, code, run.output())


def test_sweep_runs_one_slurm_job_per_point(sweep: Sweep) -> None:
    ids = sweep_job_ids(sweep.sweep_dir)
    array = ids[0].split("_")[0]
    assert ids == [f"{array}_{i}" for i in range(4)], f"expected one array job with 4 tasks, got {ids}"
    for cell in OK_CELLS:
        run_dir = sweep.sweep_dir / cell
        assert not (run_dir / "FAILED").exists(), (run_dir / "FAILED").read_text()
        assert (run_dir / "data_summary.json").is_file()
        ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        assert ckpt["global_step"] == MAX_STEPS
        assert set(ckpt["diffrop_config"]["loss"]["terms"]) == (
            {"ddpm", "pcl"} if cell.startswith("pcl") else {"ddpm"}
        )
        assert loss_steps(run_dir) == list(range(MAX_STEPS)), "one train/loss row per optimizer step"
        job = json.loads((run_dir / "job.json").read_text())
        assert job["slurm_job_id"] in ids
        assert job["restarts"] == "0"
        assert Path(job["log"]).is_file() and Path(job["log"]).parent.name == job["slurm_job_id"]
    recorded = {json.loads((sweep.sweep_dir / c / "job.json").read_text())["slurm_job_id"] for c in OK_CELLS}
    assert len(recorded) == len(OK_CELLS), "each point ran as its own SLURM job"


def test_failing_point_fails_alone_and_is_reported(sweep: Sweep, tmp_path: Path) -> None:
    # Hydra's submitter waits for every job, then re-raises the failed point's error: non-zero exit.
    assert sweep.exit_code != 0
    assert "tau.tau0 must be a finite number" in sweep.output
    bad = sweep.sweep_dir / BAD_CELL
    failed = (bad / "FAILED").read_text()
    assert "tau.tau0 must be a finite number >= 0, got -1" in failed
    fields = dict(
        line.split(": ", 1) for line in failed.splitlines() if line.startswith(("slurm_job_id:", "log:"))
    )
    assert fields["slurm_job_id"] in sweep_job_ids(sweep.sweep_dir)
    assert Path(fields["log"]).is_file() and fields["slurm_job_id"] in fields["log"]
    assert not (bad / "checkpoints" / "last.ckpt").exists()
    for cell in OK_CELLS:  # the failure did not stop the other jobs
        assert (sweep.sweep_dir / cell / "checkpoints" / "last.ckpt").is_file()

    paper = tmp_path / "paper.yaml"
    rows = [
        {"cell": c, "dataset": "digits", "method": c, "paper": {"fid": None}} for c in [*OK_CELLS, BAD_CELL]
    ]
    spec = {"title": "SLURM sweep", "columns": [{"key": "fid", "name": "FID", "lower_is_better": True}]}
    paper.write_text(yaml.safe_dump({TABLE: {**spec, "rows": rows}}))
    table = report(TABLE, sweep.runs_root, tmp_path / "out", paper=paper)
    assert table.runs[BAD_CELL].status == "failed"
    assert f"job {fields['slurm_job_id']}" in table.runs[BAD_CELL].reason
    assert f"log {fields['log']}" in table.runs[BAD_CELL].reason
    assert {table.runs[c].status for c in OK_CELLS} == {"missing"}  # trained, not evaluated: not failed
    markdown = (tmp_path / "out" / f"{TABLE}.md").read_text()
    assert "FAILED [1]" in markdown and fields["slurm_job_id"] in markdown
