"""The benchmark's interleaved measurement (benchmarks/timing.py): order A B A B ..., and paired ratios that
cancel a load that changes between rounds, where a ratio of separately taken medians does not."""

from __future__ import annotations

import pytest

from benchmarks.sampling import parse_samplers
from benchmarks.timing import interleaved, paired_ratio


def test_interleaved_runs_round_robin_and_paired_ratios_cancel_load_changes():
    """A costs 1 unit and B 2 units of work; the machine's speed changes from round to round (load 1, 5, 1,
    5, 5). Paired per-round ratios give exactly 2; measuring all A first, then all B, under the same load
    timeline gives 10."""
    load = iter([1, 1, 5, 5, 1, 1, 5, 5, 5, 5])  # one value per call: both calls of a round see the same load
    calls = []

    def measure(name: str, work: float):
        def run() -> float:
            calls.append(name)
            return work * next(load)

        return run

    secs = interleaved({"A": measure("A", 1.0), "B": measure("B", 2.0)}, rounds=5)
    assert calls == ["A", "B"] * 5
    assert secs == {"A": [1, 5, 1, 5, 5], "B": [2, 10, 2, 10, 10]}
    assert paired_ratio(secs["B"], secs["A"]) == 2.0
    with pytest.raises(ValueError, match="rounds"):
        interleaved({"A": measure("A", 1.0)}, rounds=0)


def test_sampler_list_parsing():
    assert parse_samplers("ddim-100, dpmpp2m-10,ddpm-1000") == [
        ("ddim", 100),
        ("dpmpp2m", 10),
        ("ddpm", 1000),
    ]
