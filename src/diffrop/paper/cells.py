"""The cells of a paper table and the state of the model runs they need (what the reproduce driver plans from).

A cell is one row of ``experiments/paper_numbers.yaml`` / ``figures.yaml``; it needs one diffrop model
(``configs/experiment/<dataset>/<method>.yaml``) trained under ``<runs root>/models/<dataset>__<method>/``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from diffrop.paper.smoke import SMOKE_SAMPLES
from diffrop.runtime.run_status import describe_failure

PAPER = Path("experiments/paper_numbers.yaml")
FIGURES = Path("experiments/figures.yaml")
TABLES = ("table1", "table2", "table3", "table4", "table5", "fig4a", "fig4b")
# Table 5 names its cells by the form of phi; the models are the DDPM + PCL runs of that form.
CELL_MODEL = {"exp": "ddpm_pcl", "neg_l2": "ddpm_pcl_neg_l2", "recip": "ddpm_pcl_recip"}
# Table 3 cells that train only a classifier (no diffusion model), with the classifier's data.
CLASSIFIER_ONLY = {"lt_only": "cifar100lt", "balanced": "cifar100"}
# Extra evaluation arguments per table (the number of samples comes from the table's protocol).
TABLE_EVAL = {"fig4b": ["eval.guidance_sweep=[0,0.4,0.8,1.2,1.6,2.0,2.4]"]}


@dataclass(frozen=True)
class Cell:
    """One row of a table: where its result goes, which model (experiment config) it needs, how to score it."""

    table: str
    cell: str  # `<dataset>__<method>`, the run directory name the renderer reads
    experiment: str | None  # `<dataset>/<method>` under configs/experiment; None: no diffusion model
    num_samples: int | None  # generated images (the table's protocol); None: none needed


@dataclass
class Options:
    root: Path
    smoke: bool = False
    launcher: str = "local"  # local | slurm
    devices: int = 1
    python: str = sys.executable
    train_overrides: list[str] = field(default_factory=list)
    eval_overrides: list[str] = field(default_factory=list)
    classify_overrides: list[str] = field(default_factory=list)
    inception_weights: str | None = None
    extractor: str | None = None
    out: Path = Path("experiments/results")
    dry_run: bool = False
    wandb: bool = True  # log the rendered table to W&B (diffrop.paper.wandb_upload); --no-wandb turns it off


def load_cells(table: str, paper: Path = PAPER, figures: Path = FIGURES, smoke: bool = False) -> list[Cell]:
    """The cells of a table (paper_numbers.yaml) or figure (figures.yaml), with the model each one needs."""
    specs = {**yaml.safe_load(Path(paper).read_text()), **yaml.safe_load(Path(figures).read_text())}
    if table not in specs:
        raise ValueError(f"unknown table {table!r}; choose one of {', '.join(specs)}")
    spec = specs[table]
    cells = []
    for row in spec["rows"]:
        dataset, method = row["cell"].split("__", 1)
        n = row.get("num_samples", spec.get("num_samples"))
        if table == "table3" and method in CLASSIFIER_ONLY:
            experiment, n = None, None
        else:
            experiment = f"{dataset}/{CELL_MODEL.get(method, method)}"
        cells.append(Cell(table, row["cell"], experiment, (SMOKE_SAMPLES if n else None) if smoke else n))
    return cells


def model_dir(root: Path, experiment: str) -> Path:
    return root / "models" / experiment.replace("/", "__")


def override_value(overrides: Sequence[str], key: str) -> str | None:
    """The value of the last ``key=value`` in a Hydra override list (None if absent)."""
    values = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == key and "=" in o]
    return values[-1] if values else None


def read_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint's step and stored config without reading its tensors (memory-mapped), None if unreadable."""
    try:  # metadata only: any dict with a step will do (a truncated file counts as no checkpoint)
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:
        return None
    return {"global_step": ckpt.get("global_step", 0), "config": ckpt.get("diffrop_config") or {}}


def training_state(run: Path, max_steps: int | None = None) -> tuple[str, str]:
    """('done' | 'partial' | 'failed' | 'missing', detail) of a model run directory.

    'done' needs ``checkpoints/last.ckpt`` at ``max_steps`` (default: the max_steps stored in the checkpoint)
    and no FAILED file; a FAILED run is retried (resuming from its last checkpoint).
    """
    failed, last = run / "FAILED", run / "checkpoints" / "last.ckpt"
    if failed.is_file():
        return "failed", describe_failure(failed.read_text(errors="replace"))
    if not last.is_file():
        return "missing", "no checkpoint"
    info = read_checkpoint(last)
    if info is None:
        return "partial", f"{last} is unreadable"
    target = max_steps or int(info["config"].get("trainer", {}).get("max_steps", 0))
    step = int(info["global_step"])
    return ("done" if step >= target else "partial"), f"step {step} of {target}"
