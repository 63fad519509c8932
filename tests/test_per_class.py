"""Per-class scores of an evaluation and the plot of them against each class's training count (log axis)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffrop.evaluation.metrics import per_class
from diffrop.evaluation.plots import per_class_figure, plot_per_class


def _classes() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class 0: fakes = the references. Class 1: fakes = references shifted by (100, 100). Class 2: 3 of each."""
    g = torch.Generator().manual_seed(0)
    ref0, ref1, ref2 = (
        torch.randn(10, 2, generator=g),
        torch.randn(10, 2, generator=g),
        torch.randn(3, 2, generator=g),
    )
    real = torch.cat([ref0, ref1, ref2]).double()
    fake = torch.cat([ref0, ref1 + 100, ref2]).double()
    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 3)
    return real, labels, fake, labels.clone()


def test_per_class_scores_each_class_against_its_own_references():
    scores = per_class(*_classes(), num_classes=4, k=2, min_fid_samples=5)
    assert scores["precision"][:2] == [1.0, 0.0] and scores["recall"][:2] == [1.0, 0.0]
    # equal covariances, means 100 * sqrt(2) apart: FID = |mu_1 - mu_2|^2 = 20000, and 0 for identical sets
    assert scores["fid"][0] == pytest.approx(0.0, abs=1e-6)
    assert scores["fid"][1] == pytest.approx(20000.0, rel=1e-6)
    # class 2: 3 samples per side, more than k = 2 (scored), fewer than min_fid_samples (no FID)
    assert scores["recall"][2] is not None and scores["fid"][2] is None
    assert scores["precision"][3] is None and scores["fid"][3] is None  # class 3 has no samples at all
    assert scores["num_real"] == [10, 10, 3, 0] and scores["num_fake"] == [10, 10, 3, 0]


def test_per_class_leaves_out_classes_not_above_k():
    scores = per_class(*_classes(), num_classes=3, k=3, min_fid_samples=5)
    assert scores["recall"][2] is None and scores["precision"][2] is None and scores["recall"][0] == 1.0


def test_per_class_figure_plots_scores_against_training_count_on_a_log_axis(tmp_path):
    counts = [500, 120, 30, 5]
    scores = {"recall": [0.9, 0.7, 0.4, 0.1], "fid": [3.0, None, None, None], "accuracy": [None] * 4}
    fig = per_class_figure(scores, counts, class_names=["a", "b", "c", "d"], title="t")
    axes = fig.get_axes()
    assert [ax.get_ylabel().split(" ")[0] for ax in axes] == [
        "recall",
        "FID",
    ]  # accuracy has no value: no panel
    assert all(ax.get_xscale() == "log" for ax in axes)
    np.testing.assert_array_equal(
        axes[0].collections[0].get_offsets(), [[500, 0.9], [120, 0.7], [30, 0.4], [5, 0.1]]
    )
    np.testing.assert_array_equal(axes[1].collections[0].get_offsets(), [[500, 3.0]])
    assert [t.get_text() for t in axes[0].texts] == ["a", "b", "c", "d"]
    png = plot_per_class(scores, counts, tmp_path / "per_class.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nothing_scored_writes_no_plot(tmp_path):
    assert plot_per_class({"recall": [None, None]}, [10, 1], tmp_path / "p.png") is None
    assert not (tmp_path / "p.png").exists()
