"""Paired-by-seed differences: hand-computed intervals, pairing by seed key, too few seeds."""

import math

import pytest

from diffrop.paper.paired import paired_difference


def test_paired_interval_by_hand():
    # differences 1, 2, 3: mean 2, sd 1, n 3; t_{0.975, 2} = 4.302652729911275
    d = paired_difference({0: 11.0, 1: 22.0, 2: 33.0}, {0: 10.0, 1: 20.0, 2: 30.0})
    half = 4.302652729911275 / math.sqrt(3)
    assert d.mean == pytest.approx(2.0)
    assert (d.low, d.high) == pytest.approx((2 - half, 2 + half))
    assert d.seeds == (0, 1, 2) and not d.excludes_zero  # 2 - 2.48 < 0


def test_pairs_by_seed_not_by_order():
    # the base's seed-to-seed spread (10 vs 30) cancels only when seeds are matched by key
    d = paired_difference({2: 31.0, 0: 11.0}, {0: 10.0, 2: 30.0, 5: 99.0})
    assert d.seeds == (0, 2)
    assert d.mean == pytest.approx(1.0) and d.low == pytest.approx(1.0) and d.high == pytest.approx(1.0)


def test_constant_shift_beneath_large_spread_is_detected():
    base = {s: 100.0 * s for s in range(4)}
    arm = {s: v + 0.5 + 0.01 * (-1) ** s for s, v in base.items()}
    d = paired_difference(arm, base)
    assert d.excludes_zero and d.low > 0.4


def test_one_shared_seed_gives_no_interval():
    assert paired_difference({0: 1.0, 1: 2.0}, {1: 0.0, 3: 4.0}) is None
