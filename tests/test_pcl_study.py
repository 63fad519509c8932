"""experiments/pcl_study.py: the statistics it reports, and the whole pipeline on a tiny scale."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers.train_utils import REPO, load_script

study = load_script(REPO / "experiments" / "pcl_study.py", "pcl_study")


def _entry(few_fid: list[float]) -> dict[int, dict]:
    """Per-seed study_scores.json bodies whose few-shot FID is given; every other score is 1."""
    groups = ("many", "med", "few")
    metrics = ("fid", "recall", "acc", "confusion", "to_head", "precision")
    out = {}
    for seed, fid in enumerate(few_fid):
        scores = {g: {m: (fid if (g, m) == ("few", "fid") else 1.0) for m in metrics} for g in groups}
        out[seed] = {"train": {}, "scores": {"0": scores, "0.8": scores}}
    return out


def test_summary_reports_mean_sd_and_flags_only_real_differences() -> None:
    results = {
        "ddpm": _entry([3.0, 3.1, 2.9]),
        "pcl_alg1_tau1": _entry([2.0, 2.1, 1.9]),  # 1.0 lower, sd 0.1: a real improvement
        "pcl_alg1_tau3": _entry([3.0, 3.3, 2.7]),  # same mean: no difference
    }
    summary = study.summarise(results)
    few = summary["pcl_alg1_tau1"]["recipe"]["few/fid"]
    assert few["mean"] == pytest.approx(2.0) and few["sd"] == pytest.approx(0.1)
    diff, low, high = few["vs_ddpm"]
    assert diff == pytest.approx(-1.0) and high < 0 < 3.0 + low  # the 95% interval excludes 0
    # Welch by hand: se = sqrt(0.01/3 + 0.01/3), df = 4, t_0.975 = 2.776
    assert high - low == pytest.approx(2 * 2.776 * np.sqrt(0.02 / 3), rel=1e-3)
    _, low, high = summary["pcl_alg1_tau3"]["recipe"]["few/fid"]["vs_ddpm"]
    assert low < 0 < high
    assert summary["ddpm"]["recipe"]["few/fid"]["vs_ddpm"] is None
    assert "**-1.00**" in study._cell(few, lower=True)  # better and real: bold
    assert "_+" not in study._cell(summary["pcl_alg1_tau3"]["recipe"]["few/fid"], lower=True)


@pytest.mark.slow
def test_tiny_study_end_to_end_and_resumes(tmp_path) -> None:
    args = ["--seeds", "0", "1", "--arms", "ddpm", "pcl_alg1_tau1", "--steps", "10", "--per-class", "6",
            "--probe-epochs", "1", "--jobs", "2", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]  # fmt: skip
    study.main(args)
    result = json.loads((tmp_path / "out.json").read_text())
    assert set(result["arms"]) == {"ddpm", "pcl_alg1_tau1"}
    pcl = result["arms"]["pcl_alg1_tau1"]
    assert pcl["seeds"] == [0, 1] and pcl["reduction"] == "algorithm1_sum" and pcl["tau0"] == 1
    assert pcl["grad_ratio"]["mean"] > 0  # read back from the runs' metrics.csv
    assert len(pcl["recipe"]["few/fid"]["per_seed"]) == 2 and pcl["recipe"]["few/fid"]["vs_ddpm"] is not None
    md = (tmp_path / "out.md").read_text()
    assert "| DDPM + PCL alg1 tau0=1 | 2 |" in md and (tmp_path / "out.png").stat().st_size > 0
    (tmp_path / "out.md").write_text(md + "\n## Reading\n\nhand-written\n")
    scores = tmp_path / "runs" / "ddpm" / "seed0" / "study_scores.json"
    stamp = scores.stat().st_mtime_ns
    study.main(args)  # finished runs and their scores are reused, not redone
    assert scores.stat().st_mtime_ns == stamp
    assert (tmp_path / "out.md").read_text().endswith("\n## Reading\n\nhand-written\n")  # kept on re-render
