"""experiments/overlap_bench.py: the paired statistics it reports, and the whole pipeline on a tiny scale."""

from __future__ import annotations

import json

import pytest

from diffrop.paper.study import value_cell
from tests.helpers.train_utils import REPO, load_script

bench = load_script(REPO / "experiments" / "overlap_bench.py", "overlap_bench")


def _run(eps_err: float, leakage: float, grad_ratio: float | None = None) -> dict:
    """A run's result JSON with the given eps error and tail leakage; every other score 1."""
    out = {
        "eps": {
            "eps_err": eps_err,
            "eps_err_tail": 1.0,
            "slope": 1.0,
            "per_t": {"slope": [1.0] * len(bench.T_GRID)},
        },
        "w0": {"leakage_tail": leakage, "kl_tail": 1.0, "kl_mean": 1.0, "bc_excess": 1.0},
        "train": {} if grad_ratio is None else {"grad_ratio": grad_ratio},
    }
    return out


def test_differences_to_ddpm_are_paired_by_seed():
    # Seed effects are large (0, 10, 20) and shared by both arms; the arm adds 1.0, 1.2, 0.8 in seeds 0, 1, 2.
    ddpm = {0: _run(0.0, 0.1), 1: _run(10.0, 0.2), 2: _run(20.0, 0.3)}
    pcl = {2: _run(20.8, 0.3, 0.05), 0: _run(1.0, 0.1, 0.07), 1: _run(11.2, 0.2, 0.06)}  # another order
    summary = bench.summarise({"ddpm": ddpm, "pcl_batch_tau0.6": pcl}, [0.0])
    eps = summary["pcl_batch_tau0.6"]["metrics"]["eps_err"]
    assert eps["per_seed"] == {"0": 1.0, "1": 11.2, "2": 20.8}
    diff = eps["vs_ddpm"]
    # by hand: differences 1.0, 1.2, 0.8 -> mean 1.0, sd 0.2, half-width t_{0.975, 2} * 0.2 / sqrt(3) = 4.303 * 0.11547
    assert diff["mean"] == pytest.approx(1.0) and diff["seeds"] == [0, 1, 2]
    assert diff["high"] - diff["mean"] == pytest.approx(4.3027 * 0.2 / 3**0.5, rel=1e-4)
    assert diff["low"] > 0  # unpaired, the seed spread (sd 10) would swamp it
    leak = summary["pcl_batch_tau0.6"]["metrics"]["leakage_tail@w0"]["vs_ddpm"]
    assert (
        leak["mean"] == pytest.approx(0)
        and leak["low"] == pytest.approx(0)
        and leak["high"] == pytest.approx(0)
    )
    assert summary["pcl_batch_tau0.6"]["metrics"]["grad_ratio"]["mean"] == pytest.approx(0.06)
    assert (
        summary["ddpm"]["metrics"]["eps_err"]["vs_ddpm"] is None
        and "grad_ratio" not in summary["ddpm"]["metrics"]
    )
    cell = value_cell(eps, lower=True, digits=4, interval=True)
    assert "**" not in cell and "_+1.0000_" in cell  # the interval excludes 0, and higher eps error is worse


def test_arms_cover_the_brief():
    families = {a.family for a in bench.ARMS}
    assert families == {
        "ddpm",
        "ddpm_2x_steps",
        "ddpm_2x_batch",
        "grouped_ddpm",
        "grouped_ddpm_g4",
        "grouped_ddpm_g2",
        "pcl_batch",
        "pcl_eq12",
        "pcl_eq12_g4",
        "pcl_eq12_g2",
        "hinge_eq12",
        "pcl_partner",
        "pcl_feed",
        "pcl_rarer",
        "pcl_same_xt",
    }
    arms = {a.slug: a for a in bench.ARMS}
    # issue 30: DDPM at a second forward's compute, 8 seeds for it, DDPM and the default arm
    assert (
        arms["ddpm_2x_steps"].steps_factor == 2 and "data.batch_size=256" in arms["ddpm_2x_batch"].overrides
    )
    default = f"pcl_partner_tau{bench.DEFAULT_TAU0:g}"
    assert all(arms[s].seeds == bench.EIGHT for s in ("ddpm", "ddpm_2x_steps", "ddpm_2x_batch", default))
    assert all(a.forwards == 2 for a in bench.ARMS if a.family in bench.TWO_FORWARD)
    assert (
        arms["pcl_eq12_g2_tau60"].control == "grouped_ddpm_g2"
        and "loss=feed_pcl_exp" in arms["pcl_feed_tau0.3"].overrides
    )
    grouped = next(a for a in bench.ARMS if a.family == "grouped_ddpm")
    assert "tau.tau0=0" in grouped.overrides and "loss.terms.pcl.pairing=eq12" in grouped.overrides
    batch = [a for a in bench.ARMS if a.family == "pcl_batch"]
    assert all("loss.terms.pcl.pairing=batch" in a.overrides for a in batch)  # every arm names its pairing
    partner = [a for a in bench.ARMS if a.family == "pcl_partner"]
    assert partner and all("loss.terms.pcl.pairing=partner" in a.overrides for a in partner)
    same_xt = [a for a in bench.ARMS if a.family == "pcl_same_xt"]
    assert same_xt and all("loss.terms.pcl.pairing=same_xt" in a.overrides for a in same_xt)
    hinge = [a for a in bench.ARMS if a.family == "hinge_eq12"]
    assert all("loss.terms.pcl.margin_schedule=abar" in a.overrides for a in hinge)
    assert len({a.slug for a in bench.ARMS}) == len(bench.ARMS)


@pytest.mark.slow
def test_tiny_benchmark_end_to_end_and_resumes(tmp_path):
    args = ["--seeds", "0", "1", "--arms", "ddpm", "pcl_batch_tau0.6", "--steps", "12", "--per-class", "40",
            "--eval-per-class", "10", "--sample-steps", "4", "--mc-draws", "2000", "--jobs", "1",
            "--train", "trainer.log_every_n_steps=2",
            "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]  # fmt: skip
    bench.main(args)
    result = json.loads((tmp_path / "out.json").read_text())
    assert set(result["arms"]) == {"ddpm", "pcl_batch_tau0.6"}
    pcl = result["arms"]["pcl_batch_tau0.6"]
    assert pcl["seeds"] == [0, 1] and pcl["tau0"] == 0.6
    for name in ("eps_err", "leakage_tail@w0", "kl_tail@w0", "kl_mean@w0", "bc_excess@w0", "slope"):
        metric = pcl["metrics"][name]
        assert set(metric["per_seed"]) == {"0", "1"}
        assert metric["vs_ddpm"]["seeds"] == [0, 1]
        base = result["arms"]["ddpm"]["metrics"][name]["per_seed"]
        by_hand = sum(metric["per_seed"][s] - base[s] for s in ("0", "1")) / 2
        assert metric["vs_ddpm"]["mean"] == pytest.approx(by_hand)
    assert pcl["metrics"]["grad_ratio"]["mean"] > 0  # read back from the runs' metrics.csv
    assert set(result["bayes_reference"]) == {"0", "1"}
    assert result["bayes_reference"]["0"]["eps_err"] == pytest.approx(0, abs=1e-10)  # eps* is its own answer
    md = (tmp_path / "out.md").read_text()
    assert "| PCL exp, batch pairs, tau0=0.6 | 2 |" in md and (tmp_path / "out.png").stat().st_size > 0
    (tmp_path / "out.md").write_text(md + "\n## Reading\n\nhand-written\n")
    stored = (tmp_path / "runs" / "ddpm" / "seed0.json").stat().st_mtime_ns
    bench.main(args)  # resumes: every run's result is kept, the reading too
    assert (tmp_path / "runs" / "ddpm" / "seed0.json").stat().st_mtime_ns == stored
    assert (tmp_path / "out.md").read_text().endswith("## Reading\n\nhand-written\n")


def test_eq12_arms_are_also_compared_with_their_grouped_control():
    ddpm = {0: _run(0.0, 0.1), 1: _run(10.0, 0.2)}
    grouped = {0: _run(1.0, 0.1), 1: _run(11.0, 0.2)}  # grouping alone: +1 eps error in both seeds
    eq12 = {0: _run(1.5, 0.0, 0.1), 1: _run(11.7, 0.1, 0.1)}  # PCL on top: +0.5 and +0.7, leakage -0.1
    summary = bench.summarise({"ddpm": ddpm, "grouped_ddpm": grouped, "pcl_eq12_tau8": eq12}, [0.0])
    eps = summary["pcl_eq12_tau8"]["metrics"]["eps_err"]
    assert eps["vs_ddpm"]["mean"] == pytest.approx(1.6) and eps["vs_grouped_ddpm"]["mean"] == pytest.approx(
        0.6
    )
    leak = summary["pcl_eq12_tau8"]["metrics"]["leakage_tail@w0"]["vs_grouped_ddpm"]
    assert leak["mean"] == pytest.approx(-0.1)
    assert "vs_grouped_ddpm" not in summary["grouped_ddpm"]["metrics"]["eps_err"]  # not its own control


def test_two_forward_arms_are_compared_with_ddpm_at_equal_compute():
    ddpm = {0: _run(0.0, 0.3), 1: _run(10.0, 0.2)}
    steps2 = {0: _run(-1.0, 0.3), 1: _run(9.0, 0.2)}  # twice the steps: -1 eps error in both seeds
    partner = {0: _run(0.5, 0.1, 0.07), 1: _run(10.5, 0.0, 0.07)}  # +0.5 vs DDPM, +1.5 vs DDPM 2x steps
    summary = bench.summarise({"ddpm": ddpm, "ddpm_2x_steps": steps2, "pcl_partner_tau0.4": partner}, [0.0])
    eps = summary["pcl_partner_tau0.4"]["metrics"]["eps_err"]
    assert eps["vs_ddpm"]["mean"] == pytest.approx(0.5) and eps["vs_ddpm_2x_steps"]["mean"] == pytest.approx(
        1.5
    )
    assert eps["vs_ddpm_2x_batch"] is None  # not run: no difference, not a made-up one
    assert (
        "vs_ddpm_2x_steps" not in summary["ddpm_2x_steps"]["metrics"]["eps_err"]
    )  # one forward: not compared


def test_committed_results_re_render_from_their_json(tmp_path):
    """--render-only rewrites the tables of experiments/results/overlap_bench.md from overlap_bench.json alone (the
    flags of the committed run: its defaults, with --jobs from the JSON), and keeps the file's Reading."""
    committed = REPO / "experiments" / "results" / "overlap_bench"
    (tmp_path / "out.json").write_text(committed.with_suffix(".json").read_text())
    (tmp_path / "out.md").write_text("stale tables\n## Reading\n\nhand-written\n")
    bench.main(["--render-only", "--out", str(tmp_path / "out")])
    tables = committed.with_suffix(".md").read_text().split("\n## Reading")[0]
    assert (tmp_path / "out.md").read_text() == tables + "\n## Reading\n\nhand-written\n"
    assert (tmp_path / "out.png").stat().st_size > 0
