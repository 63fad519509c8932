"""One command per paper result: train the models a table needs, evaluate each cell, render the table.

Layout under a runs root (default ``logs/paper``; ``logs/smoke`` for smoke runs)::

    models/<dataset>__<method>/   one training run per model (configs/experiment/<dataset>/<method>.yaml),
                                  shared by every table that uses the model (Tables 1, 2, 4, 5 share DDPM)
    <table>/<cell>/eval/          that cell's evaluation (its record <step>-<hash>/results.json, named by
                                  latest.json and read by diffrop.paper.report; evaluation.json: the command
                                  and checkpoint it came from)
    <table>/<cell>/FAILED         why the cell has no result (training or evaluation failed)
    <table>/wandb/                the W&B run of the rendered table (job_type report, the table's group)

Every stage looks at the files first: a model whose ``last.ckpt`` reached ``max_steps`` is not trained again, a
cell with an evaluation record is not evaluated again, a failed cell is retried on the next call (training
resumes from ``last.ckpt``) and never stops the others. An evaluation that another table already ran (the same
command on the same checkpoint file, e.g. the 50k-sample DDPM evaluation of Tables 1, 4 and 5) is not run again:
its record is copied. The stages run ``src/train.py``, ``src/eval.py`` and
``src/classify.py`` as subprocesses (a Hydra multirun for training, locally or on SLURM), so what the driver
runs is exactly what a user can type; the commands are printed and their output kept in ``<root>/logs/``.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from diffrop.evaluation.records import copy_latest, results_path
from diffrop.paper.cells import FIGURES, PAPER, Cell, load_cells, model_dir, override_value, training_state
from diffrop.paper.commands import Commands
from diffrop.paper.wandb_upload import upload_table
from diffrop.runtime.atomic_write import atomic_write
from diffrop.runtime.children import run_logged
from diffrop.runtime.run_status import failure_reason, write_failed


@dataclass
class Driver(Commands):
    """Runs the stages of one table; ``run`` returns the rendered diffrop.paper.tables Table."""

    log: list[str] = field(default_factory=list)
    where: str = ""  # the cell being worked on, "cell 3/8 <cell>: ", for the stage lines
    cells_left: int = 0  # cells not finished yet, this one included
    cell_seconds: list[float] = field(default_factory=list)  # time of each finished cell that ran a stage
    stages_run: int = 0

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
        results = results_path(cell_dir / "eval")
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
        if self.run_evaluation(cell, cell_dir / "eval", log, "eval"):
            self.mark_failed(cell, failure_reason(cell_dir / "eval" / "FAILED", log), log)

    def run_evaluation(self, cell: Cell, out_dir: Path, log: Path, stage: str) -> int:
        """``src/eval.py`` for ``cell`` into ``out_dir`` (exit code), unless another cell's identical evaluation
        exists: then its record is copied. ``evaluation.json`` records what each one ran."""
        cmd = self.eval_command(cell, out_dir, cell.num_samples)
        ckpt = model_dir(self.opts.root, cell.experiment) / "checkpoints" / "last.ckpt"
        state = ckpt.stat() if ckpt.is_file() else None
        key = {
            "command": [a for a in cmd if not a.startswith("hydra.run.dir=")],
            "checkpoint": [str(ckpt.resolve()), state and state.st_size, state and state.st_mtime_ns],
        }
        for marker in sorted(self.opts.root.glob("*/*/*/evaluation.json")):
            done = results_path(marker.parent)
            if marker.parent != out_dir and done.is_file() and json.loads(marker.read_text()) == key:
                copy_latest(marker.parent, out_dir)
                self._write(out_dir / "evaluation.json", json.dumps(key, indent=1))
                self.say(f"{self.where}{stage}: the same evaluation as {marker.parent} (results copied)")
                return 0
        rc = self.execute(cmd, log.stem, stage)
        if rc == 0 and not self.opts.dry_run:
            self._write(out_dir / "evaluation.json", json.dumps(key, indent=1))
        return rc

    @staticmethod
    def _write(path: Path, text: str) -> None:
        with atomic_write(path, "w") as f:
            f.write(text)

    def classify(self, cell: Cell) -> None:
        """Table 3: generate the cell's images with its model (unless it has none), then train the classifier."""
        o, cell_dir = self.opts, self.opts.root / self.table / cell.cell
        generated = None
        if cell.experiment:
            gen = cell_dir / "generated"
            gen_results = results_path(gen)
            if not gen_results.is_file():
                log = o.root / "logs" / f"{self.table}-generate-{cell.cell}.log"
                if self.run_evaluation(cell, gen, log, "generate"):
                    self.mark_failed(cell, failure_reason(gen / "FAILED", log), log)
                    return
            if o.dry_run:
                generated = gen / "samples.npz"
            else:
                generated = Path(json.loads(results_path(gen).read_text())["samples"])
        log = o.root / "logs" / f"{self.table}-classify-{cell.cell}.log"
        if self.execute(self.classify_command(cell, generated), log.stem, "classify"):
            self.mark_failed(cell, failure_reason(cell_dir / "eval" / "FAILED", log), log)

    def render(self) -> Any:
        from diffrop.paper.report import render_markdown, report

        paper = FIGURES if self.table.startswith("fig") else PAPER
        if self.opts.dry_run:  # the table as it stands, printed: a dry run writes nothing
            from diffrop.paper.tables import collect, get_spec, load_paper

            table = collect(get_spec(load_paper(paper), self.table), self.opts.root)
            print(render_markdown(table))
            self.say("dry run: nothing was run or written")
            return table
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
        if not self.opts.dry_run:
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
