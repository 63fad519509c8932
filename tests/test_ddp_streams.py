"""experiments/ddp_streams.py: its committed results re-render exactly, and its paired differences are what the
per-seed values give by hand."""

from __future__ import annotations

import json
import shutil

import numpy as np
from scipy import stats

from tests.helpers.train_utils import REPO, load_script

bench = load_script(REPO / "experiments" / "ddp_streams.py", "ddp_streams")
COMMITTED = REPO / "experiments" / "results" / "ddp_streams"


def test_paired_differences_are_the_mean_and_t_interval_of_the_per_seed_differences():
    arms = json.loads(COMMITTED.with_suffix(".json").read_text())["arms"]
    for name, _ in bench.METRICS:
        per_rank, shared = arms["per_rank"][name]["per_seed"], arms["shared"][name]["per_seed"]
        assert per_rank.keys() == shared.keys() and len(per_rank) == 8
        d = np.array([shared[s] - per_rank[s] for s in per_rank])
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
        diff = arms["shared"][name]["vs_per_rank"]
        assert np.isclose(diff["mean"], d.mean()) and np.isclose(diff["low"], d.mean() - half)


def test_render_only_rewrites_the_committed_tables_and_keeps_the_reading(tmp_path):
    out = tmp_path / "ddp_streams"
    shutil.copy(COMMITTED.with_suffix(".json"), out.with_suffix(".json"))
    shutil.copy(COMMITTED.with_suffix(".md"), out.with_suffix(".md"))
    bench.main(["--render-only", "--out", str(out)])
    assert out.with_suffix(".md").read_text() == COMMITTED.with_suffix(".md").read_text()
    assert "## Reading" in out.with_suffix(".md").read_text()
