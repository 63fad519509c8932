"""A rendered paper table on W&B, beside the training runs it comes from.

One W&B run per rendering (``job_type=report``), in the table's group (the ``name`` that ``diffrop.paper.reproduce``
gives its training runs, i.e. the table's name), holding the Markdown (and LaTeX) file as an artifact and the cells
as a ``wandb.Table``: one row per cell with our value and the paper's for every metric, and the cell's status.
Offline unless ``WANDB_MODE`` says otherwise (``wandb sync <dir>/wandb/offline-run-*`` later); ``WANDB_MODE=disabled``
skips it. The table is on disk before the upload starts, so a W&B failure only prints a one-line warning.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from diffrop.paper.tables import Table, our_value

JOB_TYPE = "report"


def cell_rows(table: Table) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the W&B table: dataset, method, ``<metric> ours`` / ``<metric> paper`` per metric (numbers,
    None where absent), status (ok / missing / failed), the run's num_samples and the failure reason."""
    columns = ["cell", "dataset", "method"]
    for col in table.spec.columns:
        columns += [f"{col.name} ours", f"{col.name} paper"]
    columns += ["status", "num_samples", "reason"]
    rows = []
    for row in table.spec.rows:
        run = table.runs[row.cell]
        values: list[Any] = [row.cell, row.dataset, row.method]
        for col in table.spec.columns:
            paper = row.paper.get(col.key)
            values += [our_value(run, col), None if paper is None else float(paper)]
        values += [run.status, run.results.get("num_samples"), run.reason]
        rows.append(values)
    return columns, rows


def wandb_mode() -> str:
    """The mode the report run would use: WANDB_MODE, offline when unset."""
    return os.environ.get("WANDB_MODE") or "offline"


def upload_table(
    table: Table,
    files: list[Path],
    *,
    group: str,
    project: str = "diffrop",
    save_dir: Path,
    config: dict[str, Any] | None = None,
) -> str:
    """Log ``table`` and ``files`` (the rendered Markdown first) to a new W&B run; returns a one-line outcome.

    Never raises: a W&B failure (no package, no network, a full disk) comes back as a ``W&B upload failed`` line.
    """
    mode = wandb_mode()
    if mode == "disabled":
        return "W&B upload skipped (WANDB_MODE=disabled)"
    name = table.spec.name
    run = None
    try:
        import wandb

        save_dir.mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=project, group=group, job_type=JOB_TYPE, name=f"{name}-report", dir=str(save_dir),
            mode=mode, config={"table": name, "title": table.spec.title, **(config or {})},
            tags=["report", f"table:{name}"], settings=wandb.Settings(console="off"),
        )  # fmt: skip
        columns, rows = cell_rows(table)
        run.log({f"{name}/cells": wandb.Table(columns=columns, data=rows, allow_mixed_types=True)})
        statuses = [r[columns.index("status")] for r in rows]
        run.summary.update({f"cells_{s}": statuses.count(s) for s in ("ok", "missing", "failed")})
        artifact = wandb.Artifact(f"{name}-table", type="report", description=table.spec.title)
        for path in files:
            if Path(path).is_file():
                artifact.add_file(str(path))
        run.log_artifact(artifact)
        where = Path(run.dir).parent  # the run's directory (wandb sync it)
        run.finish()
        run = None
        return f"W&B: table and {Path(files[0]).name} logged to run {name}-report ({mode}, group {group}, {where})"
    except Exception as err:  # the table is on disk already; say why the dashboard lacks it, in one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return f"W&B upload failed, table kept on disk only ({type(err).__name__}: {first})"
    finally:
        if run is not None:  # failed after init: close the run without letting that fail too
            with contextlib.suppress(Exception):
                run.finish(exit_code=1)
