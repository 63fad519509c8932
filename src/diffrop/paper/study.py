"""What the CPU studies (experiments/pcl_study.py, experiments/overlap_bench.py) share: per arm and metric the
mean and sd over seeds and the difference to a control arm paired by seed (``diffrop.paper.paired``), the markdown
cells that show them, the training diagnostics read from a run's metrics.csv, and the error bars of a
paired-difference plot. Each script keeps its own arms, scores and prose."""

from __future__ import annotations

import csv
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import stats

from diffrop.paper.paired import paired_difference

# summary name: metrics.csv column (the training diagnostics both studies report)
TRAIN_COLUMNS = {
    "grad_ratio": "train/pcl/grad_ratio",
    "eps_slope": "train/eps_slope",
    "d_between": "train/pcl/d_between",
    "d_within": "train/pcl/d_within",
}


# --- statistics --------------------------------------------------------------------------------------------------
def spread(per_seed: Mapping) -> dict:
    """Mean and sample sd (n - 1; 0 for one seed) of one arm's metric, with its per-seed values as given."""
    v = list(per_seed.values())
    return {
        "mean": float(np.mean(v)),
        "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
        "per_seed": per_seed,
    }


def difference(arm: Mapping[int, float], base: Mapping[int, float], welch: bool = False) -> dict | None:
    """mean(arm - base) with its 95% interval, paired by seed where the two share >= 2 seeds; None otherwise.

    ``welch``: where they share fewer than 2 seeds, Welch's unpaired interval instead (``seeds`` empty), and every
    result names its ``test`` ("paired" | "welch"); still None with fewer than 2 values on a side.
    """
    paired = paired_difference(arm, base)
    if paired is not None:
        return {**paired.as_dict(), "test": "paired"} if welch else paired.as_dict()
    a, b = list(arm.values()), list(base.values())
    if not welch or len(a) < 2 or len(b) < 2:
        return None
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    return {"mean": float(np.mean(a) - np.mean(b)), "low": float(ci.low), "high": float(ci.high), "seeds": [],
            "test": "welch"}  # fmt: skip


def train_medians(metrics_csv: Path, columns: Mapping[str, str] = TRAIN_COLUMNS) -> dict[str, float]:
    """Medians over the second half of training of the logged diagnostics (absent ones left out).

    The PCL diagnostics (``train/pcl/*``) leave out logged steps without pairs: a batch with no two conditioned
    samples to compare (every label dropped for classifier-free guidance) logs d_between = d_within = 0, and its
    PCL term and grad ratio are 0 by construction, not readings.
    """
    if not metrics_csv.is_file():  # a run shorter than one logging interval
        return {}
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))

    def no_pairs(row: dict) -> bool:
        distances = (row.get("train/pcl/d_between"), row.get("train/pcl/d_within"))
        return all(float(d or 0) == 0 for d in distances)

    out = {}
    for key, column in columns.items():
        pcl = column.startswith("train/pcl/")
        values = [float(r[column]) for r in rows if r.get(column) and not (pcl and no_pairs(r))]
        if values:
            out[key] = statistics.median(values[len(values) // 2 :])
    return out


# --- markdown ----------------------------------------------------------------------------------------------------
def mark(diff: Mapping, lower: bool) -> str:
    """ "**" for an interval that excludes 0 on the better side, "_" on the worse side, "" otherwise."""
    if not (diff["low"] > 0 or diff["high"] < 0):
        return ""
    return "**" if (diff["mean"] < 0) == lower else "_"


def signed(diff: Mapping, lower: bool, digits: int = 2, scale: float = 1.0) -> str:
    """The difference's mean, marked (``mark``), then † where it is Welch's unpaired interval: ``**-0.17**``."""
    m, welch = mark(diff, lower), "†" if diff.get("test") == "welch" else ""
    return f"{m}{scale * diff['mean']:+.{digits}f}{m}{welch}"


def interval_cell(diff: Mapping | None, lower: bool, digits: int = 2, scale: float = 1.0) -> str:
    """``+0.0123 [+0.0050, +0.0196]``, marked as ``signed`` († after the interval); "–" without a difference."""
    if diff is None:
        return "–"
    m, welch = mark(diff, lower), "†" if diff.get("test") == "welch" else ""
    lo, hi = scale * diff["low"], scale * diff["high"]
    return f"{m}{scale * diff['mean']:+.{digits}f}{m} [{lo:+.{digits}f}, {hi:+.{digits}f}]{welch}"


def value_cell(col: Mapping, lower: bool, digits: int = 2, scale: float = 1.0, interval: bool = False) -> str:
    """``mean ± sd`` of a ``spread`` with its ``vs_ddpm`` difference: `` (+0.12)`` (``signed``), or with
    ``interval`` the whole ``interval_cell`` on a second line (``<br>``)."""
    text = f"{scale * col['mean']:.{digits}f} ± {scale * col['sd']:.{digits}f}"
    diff = col["vs_ddpm"]
    if diff is None:
        return text
    if interval:
        return f"{text}<br>{interval_cell(diff, lower, digits, scale)}"
    return f"{text} ({signed(diff, lower, digits, scale)})"


def header(name: str, lower: bool) -> str:
    """A column header with the better direction: ``FID few ↓``."""
    return f"{name} {'↓' if lower else '↑'}"


def table(head: Sequence[str], rows: Sequence[Sequence[str]] = ()) -> list[str]:
    """A markdown table's lines: the header, the rule and one line per row."""
    return [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


# --- plots -------------------------------------------------------------------------------------------------------
def error_bars(diffs: Sequence[Mapping], scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(means, 2 x n distances to the interval's ends) of paired differences: ``errorbar``'s centre and ``xerr`` /
    ``yerr``."""
    mean = scale * np.array([d["mean"] for d in diffs], dtype=float)
    low = scale * np.array([d["low"] for d in diffs], dtype=float)
    high = scale * np.array([d["high"] for d in diffs], dtype=float)
    return mean, np.stack([mean - low, high - mean])
