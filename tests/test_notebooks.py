"""Both notebooks run top to bottom (nbclient, a real kernel): the Fig. 2 toy, and the run explorer on a tiny run
with an evaluation's results.json beside it."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import nbclient
import nbformat
import pytest

from diffrop.evaluation.plots import plot_per_class

REPO = Path(__file__).resolve().parents[1]


def execute(name: str, env: dict[str, str], monkeypatch) -> nbformat.NotebookNode:
    for key, value in env.items():  # the kernel inherits this process's environment
        monkeypatch.setenv(key, value)
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    return nb


def outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]


def fake_eval(run_dir: Path, counts: list[int]) -> None:
    """What src/eval.py leaves in <run>/eval: results.json (shot rows, per-class scores) and per_class.png."""
    out = run_dir / "eval"
    recall = [min(1.0, n / max(counts)) for n in counts]
    plot = plot_per_class({"recall": recall}, counts, out / "per_class.png")
    shot = {"fid": 10.0, "precision": 0.5, "recall": 0.4}
    results = {
        "sampler": {"name": "ddim", "steps": 3, "guidance_scale": 0.0},
        "num_samples": 30,
        "metrics": {**shot, "per_shot": {"many": shot, "med": shot, "few": shot | {"fid": 25.0}}},
        "per_class": {"recall": recall},
        "per_class_plot": str(plot),
    }
    (out / "results.json").write_text(json.dumps(results))


@pytest.mark.slow
def test_run_explorer_notebook(tmp_path, monkeypatch, run_train, tiny_run_overrides):
    run_dir = tmp_path / "run"
    trained = run_train(*tiny_run_overrides, "trainer.max_steps=3", f"hydra.run.dir={run_dir}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    summary = json.loads((run_dir / "data_summary.json").read_text())
    counts, names = summary["class_counts"], summary["class_names"]
    fake_eval(run_dir, counts)
    nb = execute(
        "run_explorer.ipynb", {"DIFFROP_RUN_DIR": str(run_dir), "DIFFROP_SAMPLE_STEPS": "2"}, monkeypatch
    )
    shown = outputs(nb)
    images = [o for o in shown if "image/png" in o.get("data", {})]
    assert len(images) == 4  # class counts, training curves, sample grid, per-class plot
    assert (
        base64.b64decode(images[-1]["data"]["image/png"]) == (run_dir / "eval" / "per_class.png").read_bytes()
    )
    text = "".join(o.get("text", "") for o in shown)
    tail_first = [names[c] for c in sorted(range(len(counts)), key=lambda c: (counts[c], c))]
    assert f"rows, tail first: {tail_first}" in text
    assert "train/loss" in text  # the last logged values of metrics.csv
    markdown = "".join(o["data"].get("text/markdown", "") for o in shown if "data" in o)
    assert "| few | 25 | 0.5 | 0.4 |" in markdown and "| all | 10 |" in markdown


@pytest.mark.slow
def test_fig2_toy_notebook(monkeypatch):
    nb = execute("fig2_toy.ipynb", {}, monkeypatch)
    assert any("image/png" in o.get("data", {}) for o in outputs(nb))
