"""The paper's tables as data: what each table holds (experiments/paper_numbers.yaml) and what each cell's run left.

``load_paper`` parses the table specs, ``collect`` reads every cell's evaluation (``records.results_path``) (or its FAILED file,
via ``diffrop.runtime.run_status``) into a ``Table``; ``diffrop.paper.report`` renders it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from diffrop.evaluation.records import results_path
from diffrop.runtime.run_status import describe_failure

DEFAULT_PAPER = Path("experiments/paper_numbers.yaml")

OFF_PROTOCOL = "†"  # marks a value from a run at a num_samples other than the protocol's

_SCALAR = (str, int, float)


@dataclass(frozen=True)
class Column:
    key: str  # path in results.json["metrics"]; dots descend ("per_shot.many.fid")
    name: str
    lower_is_better: bool
    scale: float = 1.0  # multiplies our value (e.g. 100 when a fraction is reported in percent)


@dataclass(frozen=True)
class Row:
    cell: str  # run directory name, `<dataset>__<method>`
    dataset: str
    method: str
    paper: dict[str, float | None]
    num_samples: int | None  # the protocol's; None = not checked


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    columns: list[Column]
    rows: list[Row]


@dataclass(frozen=True)
class Run:
    """One cell's outcome: status "ok" (results loaded), "missing" or "failed" (reason says why)."""

    status: str
    results: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


@dataclass(frozen=True)
class Table:
    spec: TableSpec
    runs: dict[str, Run]  # cell -> outcome


def load_paper(path: Path | str = DEFAULT_PAPER) -> dict[str, TableSpec]:
    """Parse paper_numbers.yaml into table specs, with errors that name the table and the bad entry."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"paper numbers file {path} not found; pass --paper <paper_numbers.yaml>")
    raw = yaml.safe_load(path.read_text()) or {}
    return {name: _parse_table(name, spec) for name, spec in raw.items()}


def _parse_table(name: str, spec: dict[str, Any]) -> TableSpec:
    try:
        columns = [
            Column(c["key"], c["name"], bool(c["lower_is_better"]), float(c.get("scale", 1)))
            for c in spec["columns"]
        ]
        n = spec.get("num_samples")  # a row may override the table's protocol value
        rows = [
            Row(r["cell"], r["dataset"], r["method"], r.get("paper") or {}, r.get("num_samples", n))
            for r in spec["rows"]
        ]
        table = TableSpec(name, spec["title"], columns, rows)
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"{name} in the paper numbers file: missing or malformed entry ({err!r}); a table needs title, "
            "columns [{key, name, lower_is_better}] and rows [{cell, dataset, method, paper}]"
        ) from err
    keys = {c.key for c in columns}
    for row in rows:
        if unknown := set(row.paper) - keys:
            raise ValueError(
                f"{name}/{row.cell}: paper keys {sorted(unknown)} are not columns {sorted(keys)}"
            )
    return table


def get_spec(specs: dict[str, TableSpec], name: str) -> TableSpec:
    if name not in specs:
        raise ValueError(f"unknown table {name!r}; valid tables: {', '.join(specs)}")
    return specs[name]


def load_run(run_dir: Path) -> Run:
    """Outcome of one run directory; a FAILED file (the run's or its evaluation's) wins over a stale results.json.
    Its evaluation's newest record, or the single results.json of evaluations from before records."""
    results = results_path(run_dir / "eval")
    for failed in (run_dir / "FAILED", run_dir / "eval" / "FAILED"):
        if failed.is_file():
            return Run("failed", reason=describe_failure(failed.read_text(errors="replace")))
    if not results.is_file():
        return Run("missing")
    try:
        data = json.loads(results.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
            raise ValueError("no 'metrics' object")
    except ValueError as err:  # JSONDecodeError is a ValueError
        return Run("failed", reason=f"unreadable {results}: {err}")
    return Run("ok", results=data)


def collect(spec: TableSpec, runs_root: Path) -> Table:
    return Table(spec, {row.cell: load_run(Path(runs_root) / spec.name / row.cell) for row in spec.rows})


def metric(results: dict[str, Any], key: str) -> float | None:
    """Value at a dotted path in results["metrics"]; None when absent or not a number."""
    node: Any = results.get("metrics", {})
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


def our_value(run: Run, col: Column) -> float | None:
    """Our value of one column for a cell, in the column's scale; None unless the run finished with that metric."""
    value = metric(run.results, col.key) if run.status == "ok" else None
    return None if value is None else value * col.scale


def sampler_of(results: dict[str, Any]) -> tuple[str, float | None]:
    """(description without w, guidance scale w) of a run's sampler dict (``SamplerSpec.describe``)."""
    sampler = results.get("sampler")
    if not isinstance(sampler, dict):
        return "unknown", None
    w = sampler.get("guidance_scale")
    name = sampler.get("name", "?")
    skip = ("guidance_scale", "name")
    rest = [f"{k}={v}" for k, v in sorted(sampler.items()) if k not in skip and isinstance(v, _SCALAR)]
    return f"{name} ({', '.join(rest)})" if rest else str(name), w


def off_protocol(row: Row, run: Run) -> bool:
    """A finished run at another num_samples than the protocol's (a smoke run, or one that cannot tell)."""
    return run.status == "ok" and row.num_samples not in (None, run.results.get("num_samples"))
