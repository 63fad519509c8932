"""Figures from run results: the guidance sweep (paper Fig. 4b) and an evaluation's per-class scores
against the class's training count.

Figures are drawn on a bare `matplotlib.figure.Figure`, which saves PNGs through the Agg canvas without
pyplot, so no global backend state is touched and nothing needs a display.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure


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


PER_CLASS_METRICS = (
    ("recall", "recall (k-NN, within class)"),
    ("precision", "precision (k-NN, within class)"),
    ("accuracy", "classifier accuracy"),
    ("fid", "FID within class (lower is better)"),
)


def per_class_figure(
    per_class: Mapping[str, Any],
    class_counts: list[int],
    class_names: list[str] | None = None,
    title: str = "",
) -> Figure | None:
    """One panel per scored metric: each class's score against its number of training images (log x axis).

    The long-tail view: tail classes sit on the left, so a model that neglects them shows a slope. Classes
    without a score (too few samples) are left out; None when no metric has any value. Points carry the class
    names when there are at most 20 classes.
    """
    panels = [
        (k, label) for k, label in PER_CLASS_METRICS if any(v is not None for v in per_class.get(k) or [])
    ]
    if not panels:
        return None
    fig = Figure(figsize=(3.6 * len(panels), 3.2), layout="constrained")
    for i, (key, label) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), i)
        points = [
            (n, v, c)
            for c, (n, v) in enumerate(zip(class_counts, per_class[key], strict=True))
            if v is not None
        ]
        counts, values, _ = zip(*points, strict=True)
        ax.scatter(counts, values, s=14)
        if class_names is not None and len(class_counts) <= 20:
            for n, v, c in points:
                ax.annotate(
                    str(class_names[c]), (n, v), fontsize="x-small", xytext=(2, 2), textcoords="offset points"
                )
        ax.set_xscale("log")
        ax.set_xlabel("training images of the class")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize="small")
    return fig


def plot_per_class(
    per_class: Mapping[str, Any],
    class_counts: list[int],
    out_png: Path | str,
    class_names: list[str] | None = None,
    title: str = "",
) -> Path | None:
    """``per_class_figure`` saved as a PNG; None (nothing written) when no class has a score."""
    fig = per_class_figure(per_class, class_counts, class_names, title)
    if fig is None:
        return None
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=150)
    return out_png
