"""Ours-vs-paper bars for one table (``python -m diffrop.paper.report <table> --bars``), drawn without pyplot."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

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
