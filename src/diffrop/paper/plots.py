"""Ours-vs-paper bars for one table (``python -m diffrop.paper.report <table> --bars``), and a study's paired
differences per arm (diffrop.paper.study), drawn without pyplot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from diffrop.paper.study import error_bars
from diffrop.paper.tables import Table, off_protocol, our_value


def plot_bars(table: Table, out_png: Path | str, column: str | None = None) -> Path:
    """Ours beside the paper for one metric column (default: the first); a missing value leaves no bar."""
    col = next((c for c in table.spec.columns if column in (None, c.key)), None)
    if col is None:
        raise ValueError(f"column {column!r} not in {table.spec.name}: {[c.key for c in table.spec.columns]}")
    labels, ours, paper = [], [], []
    for row in table.spec.rows:
        run = table.runs[row.cell]
        value = our_value(run, col)
        labels.append(f"{row.dataset}\n{row.method}")
        ours.append(float("nan") if value is None else value)
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


# (key in results.json's "per_class", axis label)


def paired_forest(
    arms: Sequence[Mapping],
    metrics: Sequence[tuple[str, str, float]],
    settings: Sequence[tuple[str, str, str]],
    title: str,
    path: Path,
    base: str = "DDPM",
) -> None:
    """Each arm's paired difference to ``base`` (``entry[setting][metric]["vs_ddpm"]``) with its 95% interval, one
    panel per (metric, name, scale), arms on the y axis, the (setting, colour, label) side by side. The x axis is the
    difference itself (0 = base), linear while the largest effect is within 30x the smallest, symmetric-log beyond
    (an earlier tau0 grid of experiments/pcl_study.py spans FID +0.1 to +140)."""
    fig = Figure(figsize=(13, 1.2 + 0.55 * max(len(arms), 1)), layout="constrained")
    axes = fig.subplots(1, len(metrics), sharey=True)
    y = np.arange(len(arms))[::-1]
    offsets = np.linspace(0.15, -0.15, len(settings)) if len(settings) > 1 else [0.0]
    for ax, (metric, name, scale) in zip(axes, metrics, strict=True):
        ax.axvline(0, color="0.4", lw=1)
        ends = []
        for offset, (setting, color, label) in zip(offsets, settings, strict=True):
            diffs = [e[setting][metric]["vs_ddpm"] for e in arms]
            mean, err = error_bars(diffs, scale)
            ax.errorbar(mean, y + offset, xerr=err, fmt="o", color=color, capsize=3, label=label)
            ends += [abs(scale * d[end]) for d in diffs for end in ("low", "high")]
        big, small = max(ends, default=1.0), np.median(ends) if ends else 1.0
        if big > 30 * small > 0:
            ax.set_xscale("symlog", linthresh=float(small))
        ax.set_title(f"Δ {name} vs {base} (paired, 95%)", fontsize="small")
        ax.grid(alpha=0.3)
    axes[0].set_yticks(y, [e["label"] for e in arms], fontsize="small")
    axes[0].legend(fontsize="x-small")
    fig.suptitle(title, fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
