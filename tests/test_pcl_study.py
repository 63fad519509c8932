"""experiments/pcl_study.py: the statistics it reports, and the whole pipeline on a tiny scale."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from scipy import stats

from diffrop.paper.digits_probe import score_by_group
from diffrop.paper.study import value_cell
from tests.helpers.train_utils import REPO, load_script

study = load_script(REPO / "experiments" / "pcl_study.py", "pcl_study")


def _entry(few_fid: dict[int, float]) -> dict[int, dict]:
    """Per-seed study_scores.json bodies (keyed by seed) whose few-shot FID is given; every other score 1 + seed / 100."""
    groups = ("many", "med", "few")
    metrics = ("fid", "kid", "recall", "acc", "confusion", "to_head", "precision")
    out = {}
    for seed, fid in few_fid.items():
        other = 1.0 + 0.01 * seed  # the same for every arm of a seed
        scores = {g: {m: (fid if (g, m) == ("few", "fid") else other) for m in metrics} for g in groups}
        out[seed] = {"train": {}, "scores": {"0": scores, "0.8": scores}}
    return out


T_975 = {2: 4.302653, 4: 2.776445}  # Student t quantiles, df 2 and 4 (tables)


def test_differences_are_paired_by_seed_with_a_hand_computed_interval() -> None:
    # seeds stored in completion order (2, 0, 1), not seed order: pairing must go by seed, not by position
    base = {2: 5.0, 0: 3.0, 1: 4.0}
    arm = {1: 3.9, 2: 4.8, 0: 2.8}  # per seed: -0.2, -0.1, -0.2
    summary = study.summarise({"ddpm": _entry(base), "pcl_alg1_tau1": _entry(arm)})
    few = summary["pcl_alg1_tau1"]["recipe"]["few/fid"]
    assert few["per_seed"] == {0: 2.8, 1: 3.9, 2: 4.8}
    assert few["mean"] == pytest.approx(3.8333333) and few["sd"] == pytest.approx(1.0016653)
    # by hand: differences -0.2, -0.1, -0.2, mean -1/6, sd sqrt(1/300), half width t(2) sd / sqrt(3)
    diff = few["vs_ddpm"]
    half = T_975[2] * np.sqrt(1 / 300) / np.sqrt(3)
    assert diff["test"] == "paired" and diff["seeds"] == [0, 1, 2]
    assert diff["mean"] == pytest.approx(-1 / 6)
    assert diff["low"] == pytest.approx(-1 / 6 - half, rel=1e-5) and diff["high"] == pytest.approx(
        -1 / 6 + half, rel=1e-5
    )
    assert diff["high"] < 0  # -0.310 .. -0.023: the pairing sees the effect ...
    # ... that Welch, blind to the seeds, does not: seed spread 1.0, sd of the mean difference 0.82, df ~4
    welch = stats.ttest_ind(list(arm.values()), list(base.values()), equal_var=False).confidence_interval()
    assert welch.low < 0 < welch.high
    assert "**-0.17**" in value_cell(few, lower=True)  # better and the interval excludes 0: bold
    assert summary["ddpm"]["recipe"]["few/fid"]["vs_ddpm"] is None
    # an arm equal to DDPM up to noise: the paired interval straddles 0, the cell carries no mark
    summary = study.summarise({"ddpm": _entry(base), "pcl_alg1_tau3": _entry({0: 3.1, 1: 3.9, 2: 5.0})})
    diff = summary["pcl_alg1_tau3"]["w0"]["few/fid"]["vs_ddpm"]  # differences +0.1, -0.1, 0
    assert diff["mean"] == pytest.approx(0) and diff["high"] == pytest.approx(T_975[2] * 0.1 / np.sqrt(3))
    assert value_cell(summary["pcl_alg1_tau3"]["w0"]["few/fid"], lower=True).endswith("(+0.00)")


def test_welch_only_where_an_arm_shares_fewer_than_two_seeds() -> None:
    base = {0: 3.0, 1: 3.1, 2: 2.9}
    summary = study.summarise({"ddpm": _entry(base), "pcl_alg1_tau1": _entry({2: 2.0, 3: 2.1, 4: 1.9})})
    diff = summary["pcl_alg1_tau1"]["recipe"]["few/fid"]["vs_ddpm"]  # one shared seed: unpaired
    assert diff["test"] == "welch" and diff["mean"] == pytest.approx(-1.0)
    # Welch by hand: se = sqrt(0.01/3 + 0.01/3), df = 4
    assert diff["high"] - diff["low"] == pytest.approx(2 * T_975[4] * np.sqrt(0.02 / 3), rel=1e-5)
    assert value_cell(summary["pcl_alg1_tau1"]["recipe"]["few/fid"], lower=True).endswith("(**-1.00**†)")
    summary = study.summarise({"ddpm": _entry(base), "pcl_alg1_tau1": _entry({0: 2.0})})
    assert summary["pcl_alg1_tau1"]["recipe"]["few/fid"]["vs_ddpm"] is None  # one value: no interval at all


def test_eq12_arms_are_compared_with_ddpm_and_with_the_grouped_control() -> None:
    eq12 = next(a.slug for a in study.ARMS if a.pairing == "eq12" and a.slug != study.CONTROL)
    results = {
        "ddpm": _entry({0: 3.0, 1: 4.0, 2: 5.0}),
        study.CONTROL: _entry({0: 3.5, 1: 4.6, 2: 5.6}),
        eq12: _entry({0: 3.2, 1: 4.4, 2: 5.3}),  # +0.2, +0.4, +0.3 to DDPM; -0.3, -0.2, -0.3 to the control
        "pcl_alg1_tau0.03": _entry({0: 3.0, 1: 4.0, 2: 5.0}),
    }
    summary = study.summarise(results)
    col = summary[eq12]["w0"]["few/fid"]
    half = T_975[2] * 0.1 / np.sqrt(3)  # to DDPM: sd 0.1; to the control: sd sqrt(1/300)
    half_c = T_975[2] * np.sqrt(1 / 300) / np.sqrt(3)
    assert col["vs_ddpm"]["mean"] == pytest.approx(0.3) and col["vs_ddpm"]["low"] == pytest.approx(0.3 - half)
    assert col["vs_control"]["mean"] == pytest.approx(-0.8 / 3)
    assert col["vs_control"]["high"] == pytest.approx(-0.8 / 3 + half_c)
    assert summary["pcl_alg1_tau0.03"]["w0"]["few/fid"]["vs_control"] is None  # batch pairing: DDPM only
    assert summary[study.CONTROL]["w0"]["few/fid"]["vs_control"] is None
    md = study.render(summary, argparse.Namespace(steps=1000, per_class=100), _META)
    assert md.index("## Sampled at w = 0") < md.index("## Sampled at recipe guidance")  # w = 0 first
    label = summary[eq12]["label"]
    # the paired-difference rows: to DDPM worse (italic), to the control better (bold)
    assert f"| {label} | DDPM | _+0.30_ [{0.3 - half:+.2f}, {0.3 + half:+.2f}] |" in md
    assert (
        f"| {label} | eq12 control | **-0.27** [{-0.8 / 3 - half_c:+.2f}, {-0.8 / 3 + half_c:+.2f}] |" in md
    )


_META = {"probe_accuracy": 98.0, "groups": {}, "counts": [], "wall_s": 60.0, "trained": 0}


def test_default_run_is_the_new_arm_set() -> None:
    arms = {a.slug: a for a in study.ARMS}
    default = [arms[s] for s in study.DEFAULT_ARMS]
    assert len(default) == 6 and sum(len(a.seeds) for a in default) <= 18
    control = arms[study.CONTROL]
    assert {"loss.terms.pcl.pairing=eq12", "tau.tau0=0"} <= set(control.overrides)
    eq12 = [a for a in default if a.pairing == "eq12" and a is not control]
    assert len(eq12) == 2 and all("loss.terms.pcl.pairing=eq12" in a.overrides for a in eq12)
    batch = arms["pcl_alg1_tau0.03"]  # every arm names its pairing, whatever the config default
    assert batch.pairing == "batch" and "loss.terms.pcl.pairing=batch" in batch.overrides
    assert "ddpm" in study.DEFAULT_ARMS and arms["ddpm"].overrides == ("loss=ddpm",)
    partner = [a for a in default if a.pairing == "partner"]
    assert len(partner) == 1 and "loss.terms.pcl.pairing=partner" in partner[0].overrides


def test_kid_per_group_is_the_unbiased_mmd_by_hand() -> None:
    """Kernel k(x, y) = (x.y / d + 1)^3. Real few-shot features all 0: k = 1 within the real set and across. Fake
    features 2 e_i (orthogonal, |.|^2 = d = 4): k = 1 between two of them, 8 for one with itself. The unbiased
    estimate leaves the diagonal out: 1 + 1 - 2 * 1 = 0 (the biased one would give 1 + (4*8 + 12)/16 - 2 = 1.75).
    Four identical fakes with |.|^2 = 4: 1 + 8 - 2 = 7."""
    groups = {"many": [0], "few": [1]}
    real = (torch.cat([torch.randn(6, 4), torch.zeros(6, 4)]), torch.tensor([0] * 6 + [1] * 6))
    labels = torch.tensor([0] * 4 + [1] * 4)
    for few, kid in ((2 * torch.eye(4), 0.0), (torch.ones(4, 4), 7.0)):
        fake = (torch.cat([torch.randn(4, 4), few]), labels, labels)
        assert score_by_group(real, fake, groups, k=2)["few"]["kid"] == pytest.approx(kid, abs=1e-9)


@pytest.mark.slow
def test_tiny_study_end_to_end_and_resumes(tmp_path) -> None:
    args = ["--seeds", "0", "1", "--arms", "ddpm", "pcl_alg1_tau1", "--steps", "10", "--per-class", "6",
            "--probe-epochs", "1", "--jobs", "2", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]  # fmt: skip
    study.main(args)
    result = json.loads((tmp_path / "out.json").read_text())
    assert set(result["arms"]) == {"ddpm", "pcl_alg1_tau1"}
    pcl = result["arms"]["pcl_alg1_tau1"]
    assert pcl["seeds"] == [0, 1] and pcl["reduction"] == "algorithm1_sum" and pcl["tau0"] == 1
    assert pcl["train"]["grad_ratio"]["mean"] > 0  # read back from the runs' metrics.csv
    ddpm_train = result["arms"]["ddpm"]["train"]
    assert "d_between" in ddpm_train and "grad_ratio" not in ddpm_train
    few = pcl["w0"]["few/fid"]
    assert set(few["per_seed"]) == {"0", "1"} and few["vs_ddpm"]["test"] == "paired"  # JSON keys: strings
    assert few["vs_ddpm"]["seeds"] == [0, 1] and pcl["w0"]["few/kid"]["vs_ddpm"] is not None
    md = (tmp_path / "out.md").read_text()
    assert f"| {pcl['label']} | 2 |" in md and (tmp_path / "out.png").stat().st_size > 0
    (tmp_path / "out.md").write_text(md + "\n## Reading\n\nhand-written\n")
    scores = tmp_path / "runs" / "ddpm" / "seed0" / "study_scores.json"
    stamp = scores.stat().st_mtime_ns
    study.main(args)  # finished runs and their scores are reused, not redone
    assert scores.stat().st_mtime_ns == stamp
    assert (tmp_path / "out.md").read_text().endswith("\n## Reading\n\nhand-written\n")  # kept on re-render


def test_recipe_guidance_comes_from_the_paper_recipe_config() -> None:
    """CBDM's README: DDPM 0.8, CBDM 1.6; the study reads them from the recipe, and its table title says them."""
    assert study.recipe_w("ddpm") == 0.8 and study.recipe_w("cbdm") == 1.6
    assert study.setting_title("recipe") == "recipe guidance (DDPM family w = 0.8, CBDM family w = 1.6)"


def test_committed_results_re_render_from_their_json(tmp_path) -> None:
    """--render-only rewrites the tables of experiments/results/pcl_study.md from pcl_study.json alone, as committed,
    and keeps the file's Reading."""
    committed = REPO / "experiments" / "results" / "pcl_study"
    (tmp_path / "out.json").write_text(committed.with_suffix(".json").read_text())
    (tmp_path / "out.md").write_text("stale tables\n## Reading\n\nhand-written\n")
    study.main(["--render-only", "--out", str(tmp_path / "out")])
    tables = committed.with_suffix(".md").read_text().split("\n## Reading")[0]
    assert (tmp_path / "out.md").read_text() == tables + "\n## Reading\n\nhand-written\n"
    assert (tmp_path / "out.png").stat().st_size > 0
