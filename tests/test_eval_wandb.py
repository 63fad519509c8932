"""What src/eval.py sends to W&B, read back from an offline run: the results table (one row per shot group and one
for all), the sample grid, the guidance sweep against w; and the checkpoint artifact it links to."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from diffrop.evaluation.wandb_log import checkpoint_artifact, link_checkpoint, per_class_rows, results_table
from tests.helpers.train_utils import REPO, load_script
from tests.helpers.wandb_records import offline_runs, read_run

eval_entry = load_script(REPO / "src" / "eval.py", "eval_entry_wandb")


def _scores(fid: float, accuracy: float | None = None) -> dict:
    out = {"fid": fid, "precision": fid / 100, "recall": fid / 200}
    return out if accuracy is None else out | {"accuracy": accuracy}


def fake_results(tmp_path: Path, sweep: bool = True) -> dict:
    """A results.json as src/eval.py writes it, with made-up numbers and a real grid PNG beside the samples."""
    folder = tmp_path / "samples" / "ddim3_w1"
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "grid.png")
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(tmp_path / "per_class.png")
    metrics = {
        **_scores(12.0, 0.8), "is_mean": 3.0, "is_std": 0.1, "f_8": 0.9, "f_1_8": 0.7,
        "per_shot": {"many": _scores(10.0, 0.9), "med": _scores(14.0, 0.8), "few": _scores(20.0, 0.5)},
    }  # fmt: skip
    results = {
        "metrics": metrics,
        "sampler": {"name": "ddim", "steps": 3, "guidance_scale": 1.0},
        "num_samples": 30,
        "samples": str(folder / "samples.npz"),
        "checkpoint": {"path": "/x/last.ckpt", "global_step": 2, "name": "evaltest", "artifact": None},
        "config": {
            "eval": {"k": 5},
            "train": {"tracking": {"tags": ["data:digits_lt", "loss:pcl_exp", "tau:exp_decay"]}},
        },
        "data": {"dataset": "digits_lt", "class_names": ["zero", "one", "two"], "class_counts": [90, 30, 9]},
        "per_class": {"recall": [0.9, 0.5, None], "fid": [3.0, None, None], "num_fake": [10, 10, 10]},
        "per_class_plot": str(tmp_path / "per_class.png"),
    }
    if sweep:
        results["guidance_sweep"] = [
            {"w": w, **_scores(fid)} for w, fid in ((0.0, 15.0), (1.0, 12.0), (2.0, 13.0))
        ]
        results["best_w"] = 1.0
    return results


def test_results_table_one_row_per_shot_group_then_all(tmp_path):
    columns, rows = results_table(fake_results(tmp_path))
    assert columns == ["group", "fid", "precision", "recall", "accuracy"]
    assert rows == [
        ["many", 10.0, 0.1, 0.05, 0.9],
        ["med", 14.0, 0.14, 0.07, 0.8],
        ["few", 20.0, 0.2, 0.1, 0.5],
        ["all", 12.0, 0.12, 0.06, 0.8],
    ]


def test_results_rows_without_a_classifier_have_no_accuracy(tmp_path):
    results = fake_results(tmp_path)
    for scores in [results["metrics"], *results["metrics"]["per_shot"].values()]:
        scores.pop("accuracy")
    assert [row[-1] for row in results_table(results)[1]] == [None] * 4


def test_a_per_shot_score_of_a_new_metric_is_a_column(tmp_path):
    """The columns are the per-shot keys results.json holds, so a metric's ``per_shot`` keys reach the table."""
    results = fake_results(tmp_path)
    for scores, gap in zip(
        [*results["metrics"]["per_shot"].values(), results["metrics"]], [1, 2, 3, 4], strict=True
    ):
        scores["gap"] = gap
    columns, rows = results_table(results)
    assert columns == ["group", "fid", "precision", "recall", "gap", "accuracy"]
    assert [row[4] for row in rows] == [1, 2, 3, 4]


def test_checkpoint_artifact_names_the_training_runs_model():
    run_dir = "/runs/some/run"
    expected_id = hashlib.sha1(run_dir.encode()).hexdigest()[:12]  # build.run_id of that run directory
    train = {"logger": {"wandb": {"log_model": True}}, "paths": {"output_dir": run_dir}}
    assert checkpoint_artifact(train) == f"model-{expected_id}:latest"
    assert checkpoint_artifact(
        train | {"logger": {"wandb": {"log_model": "all", "checkpoint_name": "m"}}}
    ) == ("m:latest")
    assert checkpoint_artifact(train | {"logger": {"wandb": {"log_model": False}}}) is None
    assert checkpoint_artifact(train | {"logger": {"csv": {}}}) is None  # trained without W&B


def test_link_checkpoint_uses_the_artifact_online_only():
    used = []
    results = {"checkpoint": {"artifact": "model-abc:latest"}}
    for offline in (True, False):
        run = SimpleNamespace(offline=offline, use_artifact=lambda name, type: used.append((name, type)))
        assert link_checkpoint(run, results) == "model-abc:latest"
    assert used == [("model-abc:latest", "model")]
    assert link_checkpoint(SimpleNamespace(offline=False), {"checkpoint": {"artifact": None}}) is None


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """eval.py's log_wandb on a made-up results.json, to an offline run under <tmp>/eval/wandb."""
    tmp = tmp_path_factory.mktemp("evalwandb")
    run_dir = tmp / "eval"
    run_dir.mkdir()
    results = fake_results(tmp)
    cfg = OmegaConf.create({"wandb": {"project": "diffrop-test", "mode": "offline"}})
    eval_entry.log_wandb(cfg, results, run_dir)
    (wandb_file,) = offline_runs(run_dir)
    return wandb_file, read_run(wandb_file)


def _media(wandb_file: Path, ref: dict) -> Path:
    return wandb_file.parent / "files" / ref["path"]


def test_offline_eval_run_holds_the_results_table(logged):
    wandb_file, run = logged
    assert run.job_type == "eval" and run.group == "evaltest"
    assert set(run.tags) == {"data:digits_lt", "loss:pcl_exp", "tau:exp_decay"}
    (ref,) = [row["eval/results"] for row in run.history if "eval/results" in row]
    table = json.loads(_media(wandb_file, ref).read_text())
    assert table["columns"] == ["group", "fid", "precision", "recall", "accuracy"]
    assert [row[0] for row in table["data"]] == ["many", "med", "few", "all"]
    assert table["data"][2] == ["few", 20.0, 0.2, 0.1, 0.5]


def test_offline_eval_run_holds_the_grid_and_summary(logged):
    wandb_file, run = logged
    (ref,) = [row["eval/samples"] for row in run.history if "eval/samples" in row]
    assert ref["_type"] == "image-file" and _media(wandb_file, ref).is_file()
    assert run.summary["eval/fid"] == 12.0 and run.summary["eval/per_shot/few/fid"] == 20.0
    assert run.summary["eval/best_w"] == 1.0


def test_guidance_sweep_is_logged_against_w(logged):
    _, run = logged
    assert run.metrics["sweep/*"].step_metric == "sweep/w"
    points = [(row["sweep/w"], row["sweep/fid"]) for row in run.history if "sweep/fid" in row]
    assert points == [(0.0, 15.0), (1.0, 12.0), (2.0, 13.0)]


def test_per_class_rows(tmp_path):
    columns, rows = per_class_rows(fake_results(tmp_path))
    assert columns == ["class", "name", "train_images", "recall", "fid", "num_fake"]
    assert rows == [
        [0, "zero", 90, 0.9, 3.0, 10],
        [1, "one", 30, 0.5, None, 10],
        [2, "two", 9, None, None, 10],
    ]


def test_offline_eval_run_holds_the_per_class_table_and_plot(logged):
    wandb_file, run = logged
    (table_ref,) = [row["eval/per_class"] for row in run.history if "eval/per_class" in row]
    table = json.loads(_media(wandb_file, table_ref).read_text())
    assert [row[1] for row in table["data"]] == ["zero", "one", "two"]
    (plot_ref,) = [row["eval/per_class_plot"] for row in run.history if "eval/per_class_plot" in row]
    assert plot_ref["_type"] == "image-file" and (plot_ref["width"], plot_ref["height"]) == (16, 8)
