"""diffrop.paper.study, the CPU studies' shared statistics and cells: hand-computed spreads, paired and Welch
intervals, cell strings for known intervals, the training medians of a metrics.csv, and error bars."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from diffrop.paper.study import (
    difference,
    error_bars,
    header,
    interval_cell,
    mark,
    signed,
    spread,
    table,
    train_medians,
    value_cell,
)

T_975 = {2: 4.302653, 4: 2.776445}  # Student t quantiles, df 2 and 4 (tables)


def test_spread_is_the_sample_sd_and_keeps_the_seeds():
    s = spread({"2": 5.0, "0": 1.0, "1": 3.0})  # mean 3, squared deviations 4 + 4 + 0 over n - 1 = 2: sd 2
    assert s == {"mean": 3.0, "sd": 2.0, "per_seed": {"2": 5.0, "0": 1.0, "1": 3.0}}
    assert spread({0: 7.0})["sd"] == 0.0


def test_paired_difference_on_three_seeds_by_hand():
    # per seed 0.5, 1.0, 1.5 (the seeds' own levels 10, 20, 30 cancel): mean 1, sd 0.5, half width t(2) 0.5 / sqrt 3
    d = difference({0: 10.5, 1: 21.0, 2: 31.5}, {2: 30.0, 0: 10.0, 1: 20.0})
    half = T_975[2] * 0.5 / math.sqrt(3)
    assert d["mean"] == pytest.approx(1.0) and d["seeds"] == [0, 1, 2] and "test" not in d
    assert (d["low"], d["high"]) == pytest.approx((1 - half, 1 + half), rel=1e-6)
    assert (
        difference({0: 10.5, 1: 21.0, 2: 31.5}, {2: 30.0, 0: 10.0, 1: 20.0}, welch=True)["test"] == "paired"
    )


def test_welch_only_on_request_and_only_without_two_shared_seeds():
    arm, base = {3: 2.0, 4: 2.2}, {0: 1.0, 1: 1.2, 2: 0.8}  # no shared seed
    assert difference(arm, base) is None
    d = difference(arm, base, welch=True)
    # by hand: variances 0.02 and 0.04; se^2 = 0.02 / 2 + 0.04 / 3 = 0.07 / 3; Welch-Satterthwaite
    # df = (0.07 / 3)^2 / ((0.01)^2 / 1 + (0.04 / 3)^2 / 2) = 5.444 / 1.8889 = 2.882
    se, df = math.sqrt(0.07 / 3), (0.07 / 3) ** 2 / (0.01**2 + (0.04 / 3) ** 2 / 2)
    half = stats.t.ppf(0.975, df) * se
    assert df == pytest.approx(2.882, abs=1e-3)
    assert d["test"] == "welch" and d["seeds"] == [] and d["mean"] == pytest.approx(1.1)
    assert (d["low"], d["high"]) == pytest.approx((1.1 - half, 1.1 + half))
    assert difference({3: 2.0}, base, welch=True) is None  # one value on a side: no interval


def test_cells_of_known_intervals():
    worse = {"mean": 0.0123, "low": 0.0050, "high": 0.0196}
    assert interval_cell(worse, lower=True, digits=4) == "_+0.0123_ [+0.0050, +0.0196]"
    assert interval_cell(worse, lower=False, digits=4) == "**+0.0123** [+0.0050, +0.0196]"
    straddles = {"mean": -0.5, "low": -1.25, "high": 0.25, "test": "welch"}
    assert interval_cell(straddles, lower=True) == "-0.50 [-1.25, +0.25]†"
    assert (
        interval_cell({"mean": 0.012, "low": 0.011, "high": 0.013}, True, scale=100)
        == "_+1.20_ [+1.10, +1.30]"
    )
    assert interval_cell(None, lower=True) == "–"
    assert (
        mark(straddles, lower=True) == ""
        and mark(worse, lower=True) == "_"
        and mark(worse, lower=False) == "**"
    )
    assert signed({**worse, "test": "welch"}, lower=False, digits=3) == "**+0.012**†"


def test_value_cell_short_and_with_its_interval():
    col = {"mean": 3.8333, "sd": 1.0017, "vs_ddpm": {"mean": -1 / 6, "low": -0.31, "high": -0.02}}
    assert value_cell(col, lower=True) == "3.83 ± 1.00 (**-0.17**)"
    assert (
        value_cell(col, lower=True, digits=3, interval=True) == "3.833 ± 1.002<br>**-0.167** [-0.310, -0.020]"
    )
    assert value_cell({**col, "vs_ddpm": None}, lower=True, scale=10) == "38.33 ± 10.02"


def test_markdown_table_and_headers():
    assert table([header("FID", True), header("acc", False)], [["1", "2"]]) == [
        "| FID ↓ | acc ↑ |",
        "|---|---|",
        "| 1 | 2 |",
    ]


def test_error_bars_are_the_distances_to_the_interval_ends():
    mean, err = error_bars(
        [{"mean": 1.0, "low": 0.5, "high": 2.0}, {"mean": -1.0, "low": -3.0, "high": 0.0}], 2
    )
    assert mean.tolist() == [2.0, -2.0] and err.tolist() == [[1.0, 4.0], [2.0, 2.0]]
    assert error_bars([])[1].shape == (2, 0)


def test_train_medians_take_the_second_half_and_skip_steps_without_pairs(tmp_path):
    rows = ["step,train/loss,train/pcl/grad_ratio,train/eps_slope,train/pcl/d_between,train/pcl/d_within"]
    for step, (ratio, slope) in enumerate([(9.0, 0.1), (9.0, 0.1), (0.1, 0.8), (0.3, 0.9), (0.2, 1.0)]):
        rows += [f"{step},1.0,{ratio},{slope},2.0,1.5", f"{step},,,,,"]  # every other row: another logger's
    rows += [
        "5,1.0,0.0,0.7,0.0,0.0",
        "6,1.0,0.0,0.7,0.0,0.0",
    ]  # every label dropped: no pairs, no PCL reading
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    # PCL keys: 5 readings (the no-pair steps left out), the second half is the last 3: 0.1, 0.3, 0.2 (with the
    # zeros it would be 0.3, 0.2, 0, 0: median 0.1, d_between 1.0); eps_slope: 7 readings, the last 4 are
    # 0.9, 1.0, 0.7, 0.7
    assert train_medians(tmp_path / "metrics.csv") == {
        "grad_ratio": pytest.approx(0.2),
        "eps_slope": pytest.approx(0.8),
        "d_between": 2.0,
        "d_within": 1.5,
    }
    assert train_medians(tmp_path / "missing.csv") == {}
    assert train_medians(tmp_path / "metrics.csv", {"slope": "train/eps_slope"}) == {
        "slope": pytest.approx(0.8)
    }
