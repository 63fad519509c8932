"""Table rendering from hand-made run directories; every expected string is written out by hand."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from diffrop.paper import report, tables
from diffrop.runtime import run_status

REPO = Path(__file__).resolve().parents[1]

PAPER = """
tbl:
  title: Test table
  num_samples: 50000
  columns:
    - {key: fid, name: FID, lower_is_better: true}
    - {key: per_shot.many.fid, name: FID many, lower_is_better: true}
  rows:
    - {cell: c10__ok, dataset: C10, method: A, paper: {fid: 5.34, per_shot.many.fid: 28.82}}
    - {cell: c10__neg, dataset: C10, method: B, paper: {fid: 6.26, per_shot.many.fid: null}}
    - {cell: c10__missing, dataset: C10, method: C, paper: {fid: 5.46}}
    - {cell: c10__failed, dataset: C10, method: D, paper: {fid: 5.35}}
acc:
  title: Accuracy table
  num_samples: 50000
  columns: [{key: accuracy, name: Acc, lower_is_better: false, scale: 100}]
  rows:
    - {cell: c100__x, dataset: C100, method: X, paper: {accuracy: 46.41}}
    - {cell: c100__lt_only, dataset: C100, method: LT, num_samples: null, paper: {accuracy: 37.74}}
"""


def write_results(run: Path, metrics: dict, num_samples: int = 50000, w: float | None = 0.8, **extra) -> None:
    sampler = {"name": "ddpm", "steps": 1000} | ({} if w is None else {"guidance_scale": w})
    (run / "eval").mkdir(parents=True)
    data = {"metrics": metrics, "sampler": sampler, "num_samples": num_samples, "checkpoint": "last.ckpt"}
    (run / "eval" / "results.json").write_text(json.dumps(data | {"config": {}} | extra))


@pytest.fixture
def paper(tmp_path: Path) -> Path:
    path = tmp_path / "paper.yaml"
    path.write_text(PAPER)
    return path


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    write_results(root / "tbl" / "c10__ok", {"fid": 5.41, "per_shot": {"many": {"fid": 23.5, "recall": 0.5}}})
    write_results(root / "tbl" / "c10__neg", {"fid": 6.2}, w=1.6)
    (root / "tbl" / "c10__failed").mkdir(parents=True)
    (root / "tbl" / "c10__failed" / "FAILED").write_text(
        "RuntimeError: CUDA out of memory\njob_id: 4242\nlog: /logs/4242.out\n"
    )
    return root


def test_markdown_values_paper_and_differences(tmp_path: Path, paper: Path, runs: Path) -> None:
    report.report("tbl", runs, tmp_path / "out", paper)
    md = (tmp_path / "out" / "tbl.md").read_text()
    lines = md.splitlines()
    assert lines[0] == "# Test table"
    assert "| Dataset | Method | w | FID ↓ | FID many ↓ |" in lines
    # 5.41 - 5.34 = +0.07; 23.50 - 28.82 = -5.32; 6.20 - 6.26 = -0.06
    assert "| C10 | A | 0.8 | 5.41 (paper 5.34, +0.07) | 23.50 (paper 28.82, -5.32) |" in lines
    assert "| C10 | B | 1.6 | 6.20 (paper 6.26, -0.06) | n/a (paper n/a) |" in lines
    assert "| C10 | C |  | missing (paper 5.46) | missing (paper n/a) |" in lines
    assert "| C10 | D |  | FAILED [1] (paper 5.35) | FAILED [1] (paper n/a) |" in lines
    assert "- [1] c10__failed: RuntimeError: CUDA out of memory; job 4242; log /logs/4242.out" in lines
    assert "FID, FID many on 50000 samples, ddpm (steps=1000) sampler, w per cell (column w)." in lines
    assert "Cells: 2 done, 1 missing, 1 FAILED (of 4)." in lines
    assert "SMOKE" not in md
    table_lines = [line for line in lines if line.startswith("|")]
    assert len(table_lines) == 2 + 4  # header, rule, four rows: nothing dropped
    assert {line.count(" | ") for line in table_lines[2:]} == {4}


def test_latex_written_and_escaped(tmp_path: Path, paper: Path, runs: Path) -> None:
    report.report("tbl", runs, tmp_path / "out", paper)
    tex = (tmp_path / "out" / "tbl.tex").read_text()
    assert r"\begin{tabular}{lllrr}" in tex
    assert r"Dataset & Method & w & FID $\downarrow$ & FID many $\downarrow$ \\" in tex
    assert r"C10 & A & 0.8 & 5.41 (paper 5.34, +0.07) & 23.50 (paper 28.82, -5.32) \\" in tex
    assert r"[1] c10\_\_failed: RuntimeError: CUDA out of memory; job 4242; log /logs/4242.out\par" in tex
    assert r"on 50000 samples" in tex
    assert re.search(r"(?<!\\)_", tex) is None  # every underscore escaped
    assert tex.count(r"\begin{table}") == tex.count(r"\end{table}") == 1


def test_latex_escape_specials() -> None:
    assert report.latex_escape("a_b & 50% #1 {x} $y ~ ^ \\ †") == (
        r"a\_b \& 50\% \#1 \{x\} \$y \textasciitilde{} \textasciicircum{} \textbackslash{} $^\dagger$"
    )


def test_smoke_run_is_labelled(tmp_path: Path, paper: Path) -> None:
    root = tmp_path / "runs"
    write_results(root / "tbl" / "c10__ok", {"fid": 5.41}, num_samples=1000)
    write_results(root / "tbl" / "c10__neg", {"fid": 6.2}, num_samples=50000)
    report.report("tbl", root, tmp_path / "out", paper)
    md = (tmp_path / "out" / "tbl.md").read_text()
    lines = md.splitlines()
    assert lines[0] == "# Test table — SMOKE, not a reproduction"
    assert lines[2].startswith("> **SMOKE / NOT A REPRODUCTION: 1 of 2 finished runs")
    assert "num_samples 1000 (1 run), 50000 (1 run)" in md
    assert "| C10 | A | 0.8 | 5.41† (paper 5.34, +0.07) | n/a (paper 28.82) |" in lines
    assert "| C10 | B | 0.8 | 6.20 (paper 6.26, -0.06) | n/a (paper n/a) |" in lines  # at protocol: no mark
    assert "- † c10__ok: num_samples 1000 (protocol 50000)" in lines
    tex = (tmp_path / "out" / "tbl.tex").read_text()
    assert r"\caption{Test table. SMOKE / NOT A REPRODUCTION" in tex
    assert r"5.41$^\dagger$ (paper 5.34, +0.07)" in tex


def test_scale_and_rows_exempt_from_protocol(tmp_path: Path, paper: Path) -> None:
    root = tmp_path / "runs"
    write_results(root / "acc" / "c100__x", {"accuracy": 0.4641}, w=None)
    write_results(root / "acc" / "c100__lt_only", {"accuracy": 0.3812}, num_samples=0, w=None)
    table = report.report("acc", root, tmp_path / "out", paper)
    lines = (tmp_path / "out" / "acc.md").read_text().splitlines()
    assert "| Dataset | Method | Acc ↑ |" in lines  # no guidance anywhere: no w column
    assert "| C100 | X | 46.41 (paper 46.41, +0.00) |" in lines  # 0.4641 * 100
    assert "| C100 | LT | 38.12 (paper 37.74, +0.38) |" in lines  # num_samples 0 not checked: no †
    assert not any(tables.off_protocol(row, table.runs[row.cell]) for row in table.spec.rows)


@pytest.mark.parametrize(
    ("ours", "paper", "expected"),
    [
        (5.41, 5.34, "5.41 (paper 5.34, +0.07)"),
        (5.34, 5.34, "5.34 (paper 5.34, +0.00)"),
        (5.336, 5.34, "5.34 (paper 5.34, +0.00)"),  # no "-0.00"
        (5.416, 5.34, "5.42 (paper 5.34, +0.08)"),  # difference of the displayed values
        (12.0, 7.38, "12.00 (paper 7.38, +4.62)"),
        (5.0, None, "5.00 (paper n/a)"),
    ],
)
def test_format_cell(ours: float, paper: float | None, expected: str) -> None:
    assert report.format_cell(f"{ours:.2f}", ours, paper) == expected


def test_dotted_metric_paths() -> None:
    results = {"metrics": {"fid": 7, "per_shot": {"many": {"fid": 23.5}}, "flag": True, "is_mean": None}}
    assert tables.metric(results, "per_shot.many.fid") == 23.5
    assert tables.metric(results, "fid") == 7.0
    assert tables.metric(results, "per_shot.few.fid") is None
    assert tables.metric(results, "per_shot.many.fid.x") is None
    assert tables.metric(results, "flag") is None
    assert tables.metric(results, "is_mean") is None


def test_failure_descriptions() -> None:
    assert run_status.describe_failure("") == "no reason given"
    assert run_status.describe_failure("RuntimeError: NaN loss\njob_id: 77\nlog: a/b.log\n") == (
        "RuntimeError: NaN loss; job 77; log a/b.log"
    )
    trace = 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: bad\nslurm_job_id = 9\n'
    assert run_status.describe_failure(trace) == "ValueError: bad; job 9"


def test_unreadable_results_is_failed_and_failed_wins(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    (bad / "eval").mkdir(parents=True)
    (bad / "eval" / "results.json").write_text("{not json")
    run = tables.load_run(bad)
    assert run.status == "failed"
    assert run.reason.startswith(f"unreadable {bad / 'eval' / 'results.json'}")
    write_results(tmp_path / "both", {"fid": 1.0})
    (tmp_path / "both" / "FAILED").write_text("preempted")
    assert tables.load_run(tmp_path / "both") == tables.Run("failed", reason="preempted")
    # an evaluation re-run that failed after an older success
    write_results(tmp_path / "re_eval", {"fid": 1.0})
    (tmp_path / "re_eval" / "eval" / "FAILED").write_text("OutOfMemoryError: CUDA out of memory")
    assert tables.load_run(tmp_path / "re_eval").status == "failed"
    assert tables.load_run(tmp_path / "nothing").status == "missing"


def test_unknown_table_and_bad_input(tmp_path: Path, paper: Path, runs: Path, capsys) -> None:
    with pytest.raises(ValueError, match=r"unknown table 'table9'; valid tables: tbl, acc"):
        report.report("table9", runs, tmp_path / "out", paper)
    assert (
        report.main(["table9", "--runs", str(runs), "--out", str(tmp_path / "out"), "--paper", str(paper)])
        == 2
    )
    assert "unknown table 'table9'; valid tables: tbl, acc" in capsys.readouterr().err
    assert report.main(["tbl", "--runs", str(tmp_path / "nope"), "--paper", str(paper)]) == 2
    assert "runs root" in capsys.readouterr().err
    assert report.main(["tbl", "--runs", str(runs), "--paper", str(tmp_path / "none.yaml")]) == 2
    assert "pass --paper" in capsys.readouterr().err


def test_malformed_paper_numbers(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("t1: {columns: [], rows: []}\n")
    with pytest.raises(ValueError, match="t1 in the paper numbers file"):
        tables.load_paper(path)
    path.write_text(
        "t1: {title: T, columns: [{key: fid, name: FID, lower_is_better: true}],"
        " rows: [{cell: a__b, dataset: A, method: B, paper: {fidd: 1.0}}]}\n"
    )
    with pytest.raises(ValueError, match=r"t1/a__b: paper keys \['fidd'\]"):
        tables.load_paper(path)


def test_cli_exits_zero_with_missing_and_failed(tmp_path: Path, paper: Path, runs: Path, capsys) -> None:
    out = tmp_path / "res"
    assert report.main(["tbl", "--runs", str(runs), "--out", str(out), "--paper", str(paper), "--bars"]) == 0
    assert "| C10 | D |  | FAILED [1] (paper 5.35) | FAILED [1] (paper n/a) |" in capsys.readouterr().out
    assert (out / "tbl.md").is_file()
    assert (out / "tbl.tex").is_file()
    assert (out / "tbl_bars.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_guidance_sweep_plot(tmp_path: Path, paper: Path) -> None:
    from diffrop.evaluation.plots import plot_guidance_sweep

    root = tmp_path / "runs"
    sweep = [{"w": 0.4, "fid": 6.3}, {"w": 0.8, "fid": 5.41}, {"w": 1.2, "fid": 6.0}]
    write_results(root / "tbl" / "c10__ok", {"fid": 5.41}, guidance_sweep=sweep, best_w=0.8)
    report.report("tbl", root, tmp_path / "out", paper)  # a run with a sweep gets its plot next to the table
    assert (tmp_path / "out" / "tbl_guidance.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no cell has a 'guidance_sweep'"):
        plot_guidance_sweep({"c10__x": {"metrics": {}}}, tmp_path / "x.png")


def test_paper_numbers_file_matches_design() -> None:
    specs = tables.load_paper(REPO / "experiments" / "paper_numbers.yaml")
    assert list(specs) == ["table1", "table2", "table3", "table4", "table5"]
    paper = {name: {row.cell: row.paper for row in spec.rows} for name, spec in specs.items()}
    assert len(paper["table1"]) == 11
    assert paper["table1"]["cifar10lt__ddpm_pcl"] == {"fid": 5.34}
    assert paper["table1"]["cifar100lt__ddpm_sqrt_rs"] == {"fid": 9.72}
    assert paper["table1"]["cifar100lt__cbdm_pcl"] == {"fid": 5.99}
    assert paper["table2"]["cifar10lt__cbdm_pcl"] == {
        "per_shot.many.fid": 21.77,
        "per_shot.med.fid": 36.00,
        "per_shot.few.fid": 36.65,
    }
    assert paper["table2"]["cifar100lt__ddpm"]["per_shot.few.fid"] == 30.43
    assert paper["table3"]["cifar100lt__lt_only"] == {"accuracy": 37.74}
    assert paper["table3"]["cifar100__balanced"] == {"accuracy": 69.80}
    assert paper["table4"]["cifar10lt__ddpm_reweight"] == {"fid": 6.45}
    assert paper["table5"]["cifar10lt__neg_l2"] == {"fid": 11.73}
    assert paper["table5"]["cifar100lt__recip"] == {"fid": 6.98}
    assert specs["table2"].rows[0].num_samples == 10000  # per-shot studies use 10k samples
    assert specs["table1"].rows[0].num_samples == 50000
    for spec in specs.values():
        cells = [row.cell for row in spec.rows]
        assert len(cells) == len(set(cells)), spec.name
        for row in spec.rows:
            assert re.fullmatch(r"[a-z0-9]+__[a-z0-9_]+", row.cell), row.cell
            assert set(row.paper) == {c.key for c in spec.columns}, (
                row.cell
            )  # docs/design.md gives every value


def test_failure_reason_stops_before_the_traceback_train_py_appends():
    text = (
        "ValueError: tau.tau0 must be a finite number >= 0, got -1.0\n"
        "slurm_job_id: 12_1\nlog: /runs/.submitit/12_1_log.err\n\n"
        'Traceback (most recent call last):\n  File "src/train.py", line 3, in main\nValueError: tau.tau0 ...\n'
    )
    assert run_status.describe_failure(text) == (
        "ValueError: tau.tau0 must be a finite number >= 0, got -1.0; job 12_1; log /runs/.submitit/12_1_log.err"
    )
