"""Paired-by-seed comparison of two arms of a study.

Arms that share a seed share the initial weights, the data order and the sampling noise, so the seed-to-seed
spread cancels in their per-seed difference. The interval is the paired t interval of those differences
(Student t with n - 1 degrees of freedom); Welch's unpaired test throws that pairing away and, with 2-3 seeds,
has about one degree of freedom.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class PairedDifference:
    """mean(arm - base) over the shared seeds, its 95% interval, and the seeds it used."""

    mean: float
    low: float
    high: float
    seeds: tuple[int, ...]

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "seeds": list(self.seeds)}


def paired_difference(
    arm: Mapping[int, float], base: Mapping[int, float], level: float = 0.95
) -> PairedDifference | None:
    """``arm`` minus ``base`` paired by seed (both keyed by seed); None with fewer than 2 shared seeds."""
    seeds = tuple(sorted(set(arm) & set(base)))
    if len(seeds) < 2:
        return None
    diffs = [arm[s] - base[s] for s in seeds]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = stats.t.ppf(0.5 + level / 2, df=n - 1) * sd / math.sqrt(n)
    return PairedDifference(mean, mean - half, mean + half, seeds)
