"""One command per paper result: train the models a table needs, evaluate each cell, render the table.

Layout under a runs root (default ``logs/paper``; ``logs/smoke`` for smoke runs)::

    models/<dataset>__<method>/   one training run per model (configs/experiment/<dataset>/<method>.yaml),
                                  shared by every table that uses the model (Tables 1, 2, 4, 5 share DDPM)
    <table>/<cell>/eval/          that cell's evaluation (results.json, read by diffrop.paper.report)
    <table>/<cell>/FAILED         why the cell has no result (training or evaluation failed)
    <table>/wandb/                the W&B run of the rendered table (job_type report, the table's group)

Every stage looks at the files first: a model whose ``last.ckpt`` reached ``max_steps`` is not trained again, a
cell with ``eval/results.json`` is not evaluated again, a failed cell is retried on the next call (training
resumes from ``last.ckpt``) and never stops the others. The stages run ``src/train.py``, ``src/eval.py`` and
``src/classify.py`` as subprocesses (a Hydra multirun for training, locally or on SLURM), so what the driver
runs is exactly what a user can type; the commands are printed and their output kept in ``<root>/logs/``.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import yaml

from diffrop.paper.smoke import SMOKE_CLASSIFY, SMOKE_EVAL, SMOKE_SAMPLES, SMOKE_TRAIN, write_smoke_extractor
from diffrop.paper.wandb_upload import upload_table
from diffrop.runtime.children import run_logged
from diffrop.runtime.run_status import describe_failure, failure_reason, write_failed

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
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # a truncated file counts as no checkpoint; training resumes or restarts
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


@dataclass
class Driver:
    """Runs the stages of one table; ``run`` returns the rendered diffrop.paper.tables Table."""

    table: str
    opts: Options
    log: list[str] = field(default_factory=list)
    where: str = ""  # the cell being worked on, "cell 3/8 <cell>: ", for the stage lines
    cells_left: int = 0  # cells not finished yet, this one included
    cell_seconds: list[float] = field(default_factory=list)  # time of each finished cell that ran a stage
    stages_run: int = 0

    # --- commands --------------------------------------------------------------------------------------
    def train_commands(self, experiments: list[str]) -> list[list[str]]:
        o, root = self.opts, self.opts.root.resolve()
        common = [
            f"runs_root={root}",
            f"name={self.table}",
            *(SMOKE_TRAIN if o.smoke else []),
            *o.train_overrides,
        ]
        if o.devices > 1 and o.launcher == "local":  # one torchrun per model: DDP and multirun do not mix
            torchrun = [
                o.python,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={o.devices}",
            ]
            ddp = ["trainer=ddp", f"trainer.devices={o.devices}"]
            return [[*torchrun, "src/train.py", f"experiment={e}", *ddp, *common] for e in experiments]
        sweep = [
            "-m",
            f"experiment={','.join(experiments)}",
            f"hydra.sweep.dir={root / 'models'}",
            "hydra.sweep.subdir=${run_name}",
        ]
        if o.launcher == "slurm":
            sweep += ["hydra/launcher=slurm"]
            sweep += ["trainer=ddp", f"trainer.devices={o.devices}"] if o.devices > 1 else []
        return [[o.python, "src/train.py", *sweep, *common]]

    def eval_command(self, cell: Cell, out_dir: Path, num_samples: int) -> list[str]:
        o = self.opts
        ckpt = model_dir(o.root, cell.experiment) / "checkpoints" / "last.ckpt"
        info = read_checkpoint(ckpt) or {"config": {}}
        sampler = info["config"].get("sampler") or {}
        args = [
            f"ckpt_path={ckpt.resolve()}",
            f"hydra.run.dir={out_dir.resolve()}",
            f"eval.num_samples={num_samples}",
        ]
        if sampler:  # the model's own evaluation recipe (sampler, steps, guidance w), stored at training time
            args += [f"sampler={sampler['name']}", f"sampler.steps={sampler['steps']}"]
            args += [f"sampler.eta={sampler['eta']}", f"sampler.guidance={sampler['guidance']}"]
        args += TABLE_EVAL.get(self.table, [])
        if o.smoke:
            args += [
                *SMOKE_EVAL,
                "eval.extractor=fid-helper",
                f"eval.inception_weights={self.smoke_weights()}",
            ]
            args += [f"eval.reference_cache={(o.root / 'fid_refs').resolve()}"]
        else:
            args += [f"eval.extractor={o.extractor}"] if o.extractor else []
            args += [f"eval.inception_weights={o.inception_weights}"] if o.inception_weights else []
        args += o.eval_overrides
        if o.devices > 1 and o.launcher == "local":
            return [o.python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={o.devices}",
                    "src/eval.py", *args]  # fmt: skip
        if o.launcher == "slurm":  # a one-job multirun: the evaluation runs on a SLURM node
            args = ["-m", "hydra/launcher=slurm", f"hydra.sweep.dir={out_dir.parent.resolve()}",
                    f"hydra.sweep.subdir={out_dir.name}", *[a for a in args if not a.startswith("hydra.run.dir=")]]  # fmt: skip
        return [o.python, "src/eval.py", *args]

    def classify_command(self, cell: Cell, generated: Path | None) -> list[str]:
        o = self.opts
        dataset = CLASSIFIER_ONLY.get(cell.cell.split("__", 1)[1], cell.cell.split("__", 1)[0])
        if o.smoke:  # digits stand in for CIFAR100 (LT) and its balanced form
            dataset = "digits_lt" + (" data.imb_factor=1.0" if dataset == "cifar100" else "")
        args = [
            *f"data={dataset}".split(),
            f"hydra.run.dir={(o.root / cell.table / cell.cell / 'eval').resolve()}",
        ]
        args += [f"name={self.table}"]
        args += [f"generated={generated.resolve()}"] if generated else []
        args += SMOKE_CLASSIFY if o.smoke else []
        args += [a for a in o.classify_overrides]
        if o.launcher == "slurm":
            out = (o.root / cell.table / cell.cell).resolve()
            args = ["-m", "hydra/launcher=slurm", f"hydra.sweep.dir={out}", "hydra.sweep.subdir=eval",
                    *[a for a in args if not a.startswith("hydra.run.dir=")]]  # fmt: skip
        return [o.python, "src/classify.py", *args]

    # --- helpers -----------------------------------------------------------------------------------------
    def smoke_weights(self) -> Path:
        path = (self.opts.root / "smoke_inception.pt").resolve()
        if not path.is_file():
            write_smoke_extractor(path)
        return path

    def say(self, message: str) -> None:
        self.log.append(message)
        print(f"[reproduce {self.table}] {message}", flush=True)

    def eta(self) -> str:
        """``, ETA 0:12:00`` for the cells left, from the mean time of the cells that ran a stage so far."""
        if not self.cell_seconds or not self.cells_left:
            return ""
        mean = sum(self.cell_seconds) / len(self.cell_seconds)
        return f", ETA {timedelta(seconds=round(mean * self.cells_left))} for {self.cells_left} cells"

    def execute(self, cmd: list[str], log_name: str, stage: str) -> int:
        """Run one stage command, output to <root>/logs/<log_name>.log; the tail is printed on failure."""
        log = self.opts.root / "logs" / f"{log_name}.log"
        self.say(f"{self.where}{stage} (log {log}{self.eta()})")
        self.say("$ " + shlex.join(cmd))
        if self.opts.dry_run:
            return 0
        self.stages_run += 1
        start = time.monotonic()
        env = dict(os.environ)
        if self.opts.smoke:  # tiny tensors: one thread is as fast, and far faster on a busy machine
            env.setdefault("OMP_NUM_THREADS", "1")
        rc = run_logged(cmd, log, env=env)  # stopped with the driver: no orphan to collide with the re-run
        self.say(f"  exit {rc} after {time.monotonic() - start:.0f} s (log {log})")
        if rc:
            print("".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:]), file=sys.stderr)
        return rc

    def mark_failed(self, cell: Cell, reason: str, log: Path | None = None) -> None:
        write_failed(self.opts.root / cell.table / cell.cell, reason, {"log": log}, with_traceback=False)
        self.say(f"  {cell.cell}: FAILED ({reason})")

    # --- stages ------------------------------------------------------------------------------------------
    def train(self, cells: list[Cell]) -> dict[str, tuple[str, str]]:
        """Train the models that are not finished; returns experiment -> (state, detail) afterwards."""
        o = self.opts
        max_steps = override_value(o.train_overrides, "trainer.max_steps")
        limit = int(max_steps) if max_steps else None
        experiments = sorted({c.experiment for c in cells if c.experiment})
        states = {e: training_state(model_dir(o.root, e), limit) for e in experiments}
        for e, (state, detail) in states.items():
            self.say(f"model {e}: {state} ({detail})")
        todo = [e for e, (state, _) in states.items() if state != "done"]
        for i, cmd in enumerate(self.train_commands(todo) if todo else []):
            self.execute(cmd, f"{self.table}-train-{i}", f"train {len(todo)} models")
        return {e: training_state(model_dir(o.root, e), limit) for e in experiments}

    def evaluate(self, cell: Cell, models: dict[str, tuple[str, str]]) -> None:
        o = self.opts
        cell_dir = o.root / cell.table / cell.cell
        results = cell_dir / "eval" / "results.json"
        if results.is_file() and not (cell_dir / "FAILED").is_file():
            self.say(f"{cell.cell}: evaluated already ({results})")
            return
        (cell_dir / "FAILED").unlink(missing_ok=True)  # retried now
        if cell.experiment:
            state, detail = models[cell.experiment]
            if state != "done" and not o.dry_run:
                run = model_dir(o.root, cell.experiment)
                self.mark_failed(cell, f"training {cell.experiment} {state}: {detail}", run / "FAILED")
                return
        if self.table == "table3":
            self.classify(cell)
            return
        log = o.root / "logs" / f"{self.table}-eval-{cell.cell}.log"
        if self.execute(self.eval_command(cell, cell_dir / "eval", cell.num_samples), log.stem, "eval"):
            self.mark_failed(cell, failure_reason(cell_dir / "eval" / "FAILED", log), log)

    def classify(self, cell: Cell) -> None:
        """Table 3: generate the cell's images with its model (unless it has none), then train the classifier."""
        o, cell_dir = self.opts, self.opts.root / self.table / cell.cell
        generated = None
        if cell.experiment:
            gen = cell_dir / "generated"
            gen_results = gen / "results.json"
            if not gen_results.is_file():
                log = o.root / "logs" / f"{self.table}-generate-{cell.cell}.log"
                if self.execute(self.eval_command(cell, gen, cell.num_samples), log.stem, "generate"):
                    self.mark_failed(cell, failure_reason(gen / "FAILED", log), log)
                    return
            if o.dry_run:
                generated = gen / "samples.npz"
            else:
                generated = Path(json.loads(gen_results.read_text())["samples"])
        log = o.root / "logs" / f"{self.table}-classify-{cell.cell}.log"
        if self.execute(self.classify_command(cell, generated), log.stem, "classify"):
            self.mark_failed(cell, failure_reason(cell_dir / "eval" / "FAILED", log), log)

    def render(self) -> Any:
        from diffrop.paper.report import render_markdown, report

        paper = FIGURES if self.table.startswith("fig") else PAPER
        out = self.opts.out / "smoke" if self.opts.smoke else self.opts.out
        table = report(self.table, self.opts.root, out, paper)
        if self.table == "fig4a":
            from diffrop.paper.plots import plot_bars

            plot_bars(table, out / "fig4a_bars.png")
        print(render_markdown(table))
        self.say(f"wrote {out / self.table}.md and .tex")
        if self.opts.wandb and not self.opts.dry_run:  # in the training runs' group (their `name`, the table)
            o, files = self.opts, [out / f"{self.table}.md", out / f"{self.table}.tex"]
            group = override_value(o.train_overrides, "name") or self.table
            project = override_value(o.train_overrides, "logger.wandb.project") or "diffrop"
            info = {"smoke": o.smoke, "runs_root": str(o.root.resolve())}
            self.say(upload_table(table, files, group=group, project=project, save_dir=o.root / self.table, config=info))  # fmt: skip
        return table

    def run(self) -> Any:
        cells = load_cells(self.table, smoke=self.opts.smoke)
        self.opts.root.mkdir(parents=True, exist_ok=True)
        models = self.train(cells)
        for i, cell in enumerate(cells, 1):
            self.where, self.cells_left = f"cell {i}/{len(cells)} {cell.cell}: ", len(cells) - i + 1
            start, ran = time.monotonic(), self.stages_run
            self.evaluate(cell, models)
            if self.stages_run > ran:
                self.cell_seconds.append(time.monotonic() - start)
        self.where, self.cells_left = "", 0
        return self.render()
