"""The reproduce driver's rendered table on W&B (diffrop.paper.wandb_upload): rendered from hand-made run directories
through ``Driver.render``, then read back from the offline run's files (tests/wandb_records.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diffrop.paper import wandb_upload
from diffrop.paper.cells import Options
from diffrop.paper.reproduce import Driver
from tests.helpers.wandb_records import offline_runs, read_run

REPO = Path(__file__).resolve().parents[1]


def write_results(run: Path, fid: float, num_samples: int = 50000) -> None:
    (run / "eval").mkdir(parents=True)
    sampler = {"name": "ddpm", "steps": 1000, "guidance_scale": 0.8}
    data = {"metrics": {"fid": fid}, "sampler": sampler, "num_samples": num_samples, "config": {}}
    (run / "eval" / "results.json").write_text(json.dumps(data))


@pytest.fixture
def render(tmp_path, monkeypatch, capsys):
    """Table 4 (three cells: one done, one failed, one missing) rendered by the driver; returns (driver, markdown)."""
    runs = tmp_path / "runs"
    write_results(runs / "table4" / "cifar10lt__ddpm", 5.9)
    (runs / "table4" / "cifar10lt__ddpm_reweight").mkdir(parents=True)
    (runs / "table4" / "cifar10lt__ddpm_reweight" / "FAILED").write_text("RuntimeError: boom\n")
    monkeypatch.chdir(REPO)  # the driver reads experiments/paper_numbers.yaml relative to the repository
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline by default

    def run(**kw) -> tuple[Driver, str]:
        driver = Driver("table4", Options(root=runs, out=tmp_path / "results", **kw))
        driver.render()
        if kw.get("dry_run"):  # a dry run prints the table and writes nothing
            assert not (tmp_path / "results").exists()
            return driver, capsys.readouterr().out
        return driver, (tmp_path / "results" / "table4.md").read_text()

    return run


def test_rendered_table_is_an_offline_report_run_in_the_tables_group(render, tmp_path):
    driver, md = render(train_overrides=["logger.wandb.project=mine"])
    (path,) = offline_runs(tmp_path / "runs" / "table4")
    run = read_run(path)
    assert (run.group, run.job_type, run.name) == (
        "table4",
        "report",
        "table4-report",
    )  # group: train's `name`
    assert run.config["table"] == "table4" and run.config["smoke"] is False
    assert "report" in run.tags
    assert any("W&B: table and table4.md logged" in line and "offline" in line for line in driver.log)
    # the cells as a wandb.Table, one row per cell
    (logged,) = [h["table4/cells"] for h in run.history if "table4/cells" in h]
    assert logged["_type"] == "table-file" and logged["nrows"] == 3
    data = json.loads((path.parent / "files" / logged["path"]).read_text())
    columns = ["cell", "dataset", "method", "FID ours", "FID paper", "status", "num_samples", "reason"]
    assert data["columns"] == columns
    rows = {r[0]: dict(zip(columns, r, strict=True)) for r in data["data"]}
    assert rows["cifar10lt__ddpm"] | {"reason": ""} == {
        "cell": "cifar10lt__ddpm", "dataset": "CIFAR10LT", "method": "DDPM", "FID ours": 5.9, "FID paper": 5.76,
        "status": "ok", "num_samples": 50000, "reason": "",
    }  # fmt: skip
    assert (
        rows["cifar10lt__ddpm_pcl"]["status"] == "missing" and rows["cifar10lt__ddpm_pcl"]["FID ours"] is None
    )
    assert rows["cifar10lt__ddpm_pcl"]["FID paper"] == 5.34
    failed = rows["cifar10lt__ddpm_reweight"]
    assert failed["status"] == "failed" and "boom" in failed["reason"]
    assert run.summary["cells_ok"] == 1 and run.summary["cells_failed"] == 1
    # the Markdown (and LaTeX) file as an artifact of the run, the file the driver wrote
    (artifact,) = [a for a in run.artifacts if a.type == "report"]  # wandb adds one for the logged Table
    assert (artifact.name, artifact.type) == ("table4-table", "report")
    files = {e.path: e.local_path for e in artifact.manifest.contents}
    assert set(files) == {"table4.md", "table4.tex"}
    assert "cifar10lt__ddpm_reweight: RuntimeError: boom" in md and "5.90 (paper 5.76, +0.14)" in md


@pytest.mark.parametrize("how", ["--no-wandb", "WANDB_MODE=disabled", "dry run"])
def test_no_wandb_flag_disabled_mode_and_dry_run_skip_it(render, tmp_path, monkeypatch, how):
    if how == "WANDB_MODE=disabled":
        monkeypatch.setenv("WANDB_MODE", "disabled")
    kw = {"--no-wandb": {"wandb": False}, "dry run": {"dry_run": True}}.get(how, {})
    _, md = render(**kw)
    assert "Cells: 1 done, 1 missing, 1 FAILED" in md
    assert not (tmp_path / "runs" / "table4" / "wandb").exists()


def test_a_wandb_failure_leaves_the_table_and_warns_in_one_line(render, monkeypatch, capsys):
    import wandb

    def broken(*args, **kwargs):
        raise RuntimeError("no space left on device\nsecond line")

    monkeypatch.setattr(wandb, "init", broken)
    driver, md = render()
    assert "Cells: 1 done, 1 missing, 1 FAILED" in md
    assert driver.log[-1] == (
        "W&B upload failed, table kept on disk only (RuntimeError: no space left on device)"
    )
    assert "[reproduce table4] W&B upload failed" in capsys.readouterr().out


def test_cli_flag():
    import importlib.util

    spec = importlib.util.spec_from_file_location("reproduce_cli", REPO / "experiments" / "reproduce.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.parse(["table4"])[1].wandb is True
    assert cli.parse(["table4", "--no-wandb"])[1].wandb is False


def test_cell_rows_scale_a_fraction_to_the_papers_percent(tmp_path):
    from diffrop.paper.tables import Column, Row, Run, Table, TableSpec

    spec = TableSpec(
        "t3",
        "T",
        [Column("accuracy", "Acc", False, 100.0)],
        [Row("a__b", "A", "B", {"accuracy": 46.41}, None)],
    )
    table = Table(spec, {"a__b": Run("ok", {"metrics": {"accuracy": 0.5}})})
    columns, rows = wandb_upload.cell_rows(table)
    assert columns[3:5] == ["Acc ours", "Acc paper"] and rows == [
        ["a__b", "A", "B", 50.0, 46.41, "ok", None, ""]
    ]
