"""Figures from run results: the guidance sweep (paper Fig. 4b) and ours-vs-paper bars for a table.

Figures are drawn on a bare `matplotlib.figure.Figure`, which saves PNGs through the Agg canvas without
pyplot, so no global backend state is touched and nothing needs a display.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure

if TYPE_CHECKING:
    from diffrop.report import Table


def plot_guidance_sweep(
    results: Mapping[str, Mapping[str, Any]], out_png: Path | str, metric: str = "fid"
) -> Path:
    """Metric against guidance scale w, one line per cell (paper Fig. 4b); the best w is starred.

    `results` maps a cell name to its results.json, which holds "guidance_sweep": [{"w": .., "fid": ..}, ...]
    and optionally "best_w".
    """
    fig = Figure(figsize=(5, 3.5), layout="constrained")
    ax = fig.add_subplot()
    plotted = 0
    for cell, res in results.items():
        points = sorted(
            (p["w"], p[metric]) for p in res.get("guidance_sweep", []) if p.get(metric) is not None
        )
        if not points:
            continue
        ws, values = zip(*points, strict=True)
        (line,) = ax.plot(ws, values, marker="o", label=cell)
        best = dict(points).get(res.get("best_w"))
        if best is not None:
            ax.plot([res["best_w"]], [best], marker="*", markersize=14, color=line.get_color())
        plotted += 1
    if not plotted:
        raise ValueError(
            f"no cell has a 'guidance_sweep' with {metric!r} values; cells given: {list(results)}"
        )
    ax.set_xlabel("guidance scale w")
    ax.set_ylabel(metric.upper() if metric == "fid" else metric)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=150)
    return out_png


def plot_bars(table: Table, out_png: Path | str, column: str | None = None) -> Path:
    """Ours beside the paper for one metric column (default: the first); a missing value leaves no bar."""
    from diffrop.report import metric, off_protocol

    col = next((c for c in table.spec.columns if column in (None, c.key)), None)
    if col is None:
        raise ValueError(f"column {column!r} not in {table.spec.name}: {[c.key for c in table.spec.columns]}")
    labels, ours, paper = [], [], []
    for row in table.spec.rows:
        run = table.runs[row.cell]
        value = metric(run.results, col.key) if run.status == "ok" else None
        labels.append(f"{row.dataset}\n{row.method}")
        ours.append(float("nan") if value is None else value * col.scale)
        paper.append(float("nan") if row.paper.get(col.key) is None else row.paper[col.key])
    x = range(len(labels))
    fig = Figure(figsize=(max(4.0, 0.9 * len(labels)), 3.5), layout="constrained")
    ax = fig.add_subplot()
    ax.bar([i - 0.2 for i in x], paper, width=0.4, label="paper", color="0.7")
    ax.bar([i + 0.2 for i in x], ours, width=0.4, label="ours")
    ax.set_xticks(list(x), labels, rotation=45, ha="right", fontsize="x-small")
    ax.set_ylabel(f"{col.name} ({'lower' if col.lower_is_better else 'higher'} is better)")
    smoke = any(off_protocol(row, table.runs[row.cell]) for row in table.spec.rows)
    ax.set_title(table.spec.title + (" — SMOKE, not a reproduction" if smoke else ""), fontsize="small")
    ax.legend(fontsize="small")
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=150)
    return out_png
