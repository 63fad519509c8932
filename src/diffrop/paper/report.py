"""Render the paper's tables from run results, ours beside the paper's numbers.

Reads `<runs_root>/<table>/<cell>/eval/results.json` (or `<run>/FAILED`, the error text of a failed run) for
every row of `experiments/paper_numbers.yaml` and writes `<table>.md` and `<table>.tex`. A cell reads
"ours (paper p, ours - p)". Missing and failed runs stay in the table, so a half-finished reproduction never
looks complete, and runs at another num_samples than the protocol (smoke runs) are marked and the whole
table labelled, so nobody mistakes them for a reproduction.

    python -m diffrop.paper.report table1 --runs runs --out experiments/results
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from diffrop.paper.tables import (
    DEFAULT_PAPER,
    OFF_PROTOCOL,
    Table,
    collect,
    get_spec,
    load_paper,
    off_protocol,
    our_value,
    sampler_of,
)


def format_cell(ours: str, ours_value: float | None, paper: float | None) -> str:
    """'5.41 (paper 5.34, +0.07)'; the difference is taken between the two displayed (rounded) values."""
    if paper is None:
        return f"{ours} (paper n/a)"
    if ours_value is None:
        return f"{ours} (paper {paper:.2f})"
    diff = round(round(ours_value, 2) - round(paper, 2), 2) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{ours} (paper {paper:.2f}, {diff:+.2f})"


def _counts(values: list[Any]) -> str:
    return ", ".join(f"{v} ({n} run{'s' * (n > 1)})" for v, n in Counter(values).items())


def describe_runs(table: Table) -> list[str]:
    """Header lines: the smoke banner if any, what the finished runs used, how many cells are done."""
    done = [(row, table.runs[row.cell]) for row in table.spec.rows if table.runs[row.cell].status == "ok"]
    lines = []
    if smoke := [row for row, run in done if off_protocol(row, run)]:
        protocol = "/".join(sorted({str(row.num_samples) for row in smoke}))
        lines.append(
            f"SMOKE / NOT A REPRODUCTION: {len(smoke)} of {len(done)} finished runs did not use the protocol's "
            f"num_samples ({protocol}); their values, marked {OFF_PROTOCOL}, are not comparable with the paper."
        )
    if done:
        metrics = ", ".join(c.name for c in table.spec.columns)
        samples = [run.results.get("num_samples") for _, run in done]
        samplers = [sampler_of(run.results) for _, run in done]
        n = f"{samples[0]} samples" if len(set(samples)) == 1 else f"num_samples {_counts(samples)}"
        names = [s for s, _ in samplers]
        s = f"{names[0]} sampler" if len(set(names)) == 1 else f"samplers {_counts(names)}"
        ws = {w for _, w in samplers if w is not None}
        w = "" if not ws else f", w={ws.pop()}" if len(ws) == 1 else ", w per cell (column w)"
        lines.append(f"{metrics} on {n}, {s}{w}.")
    n = Counter(run.status for run in table.runs.values())
    lines.append(
        f"Cells: {n['ok']} done, {n['missing']} missing, {n['failed']} FAILED (of {len(table.runs)})."
    )
    return lines


def grid(table: Table) -> tuple[list[str], list[list[str]], list[str]]:
    """(leading header cells, body rows, notes) as plain text; renderers add metric headers and escape."""
    show_w = any(sampler_of(r.results)[1] is not None for r in table.runs.values() if r.status == "ok")
    body, failures, smoke = [], [], []
    for row in table.spec.rows:
        run = table.runs[row.cell]
        mark = OFF_PROTOCOL if off_protocol(row, run) else ""
        if run.status == "failed":
            failures.append(f"[{len(failures) + 1}] {row.cell}: {run.reason}")
        if mark:
            got = run.results.get("num_samples")
            smoke.append(f"{mark} {row.cell}: num_samples {got} (protocol {row.num_samples})")
        cells = [row.dataset, row.method]
        if show_w:
            w = sampler_of(run.results)[1] if run.status == "ok" else None
            cells.append("" if w is None else f"{w:g}")
        for col in table.spec.columns:
            value = our_value(run, col)
            ours = "n/a" if value is None else f"{value:.2f}{mark}"
            ours = {"missing": "missing", "failed": f"FAILED [{len(failures)}]"}.get(run.status, ours)
            cells.append(format_cell(ours, value, row.paper.get(col.key)))
        body.append(cells)
    return ["Dataset", "Method", *(["w"] if show_w else [])], body, failures + smoke


def render_markdown(table: Table) -> str:
    lead, body, notes = grid(table)
    header = lead + [f"{c.name} {'↓' if c.lower_is_better else '↑'}" for c in table.spec.columns]
    info = describe_runs(table)
    smoke = info[0].startswith("SMOKE")
    out = [f"# {table.spec.title}{' — SMOKE, not a reproduction' if smoke else ''}", ""]
    out += [f"> **{info[0]}**", ""] if smoke else []
    out += [*info[smoke:], "", "Each cell: ours (paper, ours − paper).", ""]
    out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(c.replace("|", r"\|") for c in cells) + " |" for cells in body]
    out += ["", *(f"- {n}" for n in notes)] if notes else []
    return "\n".join([*out, ""])


_LATEX = {c: "\\" + c for c in "&%$#_{}"} | {
    **{"~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"},
    **{OFF_PROTOCOL: r"$^\dagger$", "−": "-", "—": "--", "↓": r"$\downarrow$", "↑": r"$\uparrow$"},
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)


def render_latex(table: Table) -> str:
    """A booktabs table fragment (needs \\usepackage{booktabs}); notes go below the tabular."""
    lead, body, notes = grid(table)
    header = lead + [f"{c.name} {'↓' if c.lower_is_better else '↑'}" for c in table.spec.columns]
    caption = " ".join(latex_escape(line) for line in [table.spec.title + ".", *describe_runs(table)])
    out = [
        f"% generated by: python -m diffrop.paper.report {table.spec.name}",
        r"\begin{table}[t]",
        r"\centering",
    ]
    cols = "l" * len(lead) + "r" * len(table.spec.columns)
    out += [rf"\caption{{{caption}}}", rf"\begin{{tabular}}{{{cols}}}"]
    out += [r"\toprule", " & ".join(map(latex_escape, header)) + r" \\", r"\midrule"]
    out += [" & ".join(map(latex_escape, cells)) + r" \\" for cells in body]
    out += [r"\bottomrule", r"\end{tabular}"]
    # each note ends in \par, not \\: a "[2]" right after \\ would be read as its optional argument
    out += [r"\par\smallskip\footnotesize", *(latex_escape(n) + r"\par" for n in notes)] if notes else []
    return "\n".join([*out, r"\end{table}", ""])


def report(name: str, runs_root: Path | str, out_dir: Path | str, paper: Path | str = DEFAULT_PAPER) -> Table:
    """Collect one table's runs and write `<out_dir>/<name>.md` and `.tex` (plus a guidance plot if any)."""
    spec = get_spec(load_paper(paper), name)
    runs_root, out_dir = Path(runs_root), Path(out_dir)
    if not runs_root.is_dir():
        raise FileNotFoundError(f"runs root {runs_root} is not a directory; pass --runs <dir with {name}/>")
    table = collect(spec, runs_root)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.md").write_text(render_markdown(table))
    (out_dir / f"{name}.tex").write_text(render_latex(table))
    ok = {c: r.results for c, r in table.runs.items() if r.status == "ok"}
    if sweeps := {c: res for c, res in ok.items() if "guidance_sweep" in res}:
        from diffrop.evaluation.plots import (
            plot_guidance_sweep,  # matplotlib only when there is something to plot
        )

        plot_guidance_sweep(sweeps, out_dir / f"{name}_guidance.png")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m diffrop.paper.report", description=__doc__.split("\n")[0]
    )
    parser.add_argument("table", help="table name in the paper numbers file, e.g. table1")
    parser.add_argument("--runs", default="runs", help="runs root holding <table>/<cell>/ (default: runs)")
    parser.add_argument("--out", default="experiments/results", help="output directory")
    parser.add_argument("--paper", default=str(DEFAULT_PAPER), help="paper numbers YAML")
    parser.add_argument("--bars", action="store_true", help="also write <table>_bars.png (ours vs paper)")
    args = parser.parse_args(argv)
    try:
        table = report(args.table, args.runs, args.out, args.paper)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.bars:
        from diffrop.paper.plots import plot_bars

        plot_bars(table, Path(args.out) / f"{args.table}_bars.png")
    print(render_markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
