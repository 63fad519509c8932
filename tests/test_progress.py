"""Progress lines for log files: the bar chosen for a non-terminal, and what one line says."""

from __future__ import annotations

import io
import itertools
import math
from unittest.mock import patch

import pytest
import torch
from lightning.pytorch.callbacks import RichProgressBar

from diffrop.runtime.progress import track
from diffrop.training.progress_bars import LogProgress
from tests.helpers.config_objects import from_yaml


def default_bar(kind: str, **kwargs):
    """``callbacks.progress_bar`` as configs/callbacks/default.yaml sets it, of this kind."""
    return from_yaml("callbacks/default", "progress_bar", kind=kind, **kwargs)


def test_auto_picks_log_lines_when_stdout_is_not_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stdout", io.StringIO())  # like a file: not a TTY
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    bar = default_bar("auto", every_n_steps=7)
    assert isinstance(bar, LogProgress) and bar.every_n_steps == 7


def test_auto_picks_rich_on_a_terminal(monkeypatch):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich's switch for "treat the output as a terminal"
    assert isinstance(default_bar("auto"), RichProgressBar)


def test_explicit_kinds_and_bad_values():
    assert isinstance(default_bar("rich", refresh_rate=3), RichProgressBar)
    assert isinstance(default_bar("log"), LogProgress)
    with pytest.raises(ValueError, match="kind='tqdm'"):
        default_bar("tqdm")
    with pytest.raises(ValueError, match="every_n_steps > 0 or every_n_seconds > 0"):
        LogProgress(every_n_steps=0, every_n_seconds=0)


def test_line_reports_step_loss_throughput_and_eta():
    bar = LogProgress(every_n_seconds=10)
    bar._start, bar._last, bar._images = (0.0, 0), (90.0, 900), 64_000  # 100 steps of 640 images in 10 s
    line = bar.line(1000, 2000, {"train/loss": 0.5, "v_num": 3}, now=100.0)
    # 1000 steps in 100 s -> the remaining 1000 take 100 s
    assert line == "step 1000/2000 (50.0%) | train/loss 0.5 | 6,400 img/s | elapsed 0:01:40 | ETA 0:01:40"


def test_line_without_a_known_end_has_no_eta():
    bar = LogProgress(every_n_steps=1)
    bar._start, bar._last, bar._images = (0.0, 10), (0.0, 10), 0
    line = bar.line(20, math.inf, {}, now=5.0)
    assert line.startswith("step 20 |") and "ETA" not in line and "elapsed 0:00:05" in line


@pytest.fixture
def lines(monkeypatch):
    """What diffrop.runtime.progress.emit would write, with stdout a file (not a terminal)."""
    monkeypatch.setattr("sys.stdout", io.StringIO())
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    out: list[str] = []
    monkeypatch.setattr("diffrop.runtime.progress.emit", out.append)
    return out


def test_track_writes_plain_lines_off_a_terminal_from_rank_zero_only(lines, monkeypatch):
    assert list(track(range(4), "sampling", every_n_seconds=0)) == [0, 1, 2, 3]
    assert lines[0].startswith("sampling: 1/4 (25%) | elapsed ") and "ETA" in lines[0]
    assert len(lines) == 4 and lines[-1].startswith("sampling: 4/4 (100%)")
    lines.clear()
    assert list(track(range(4), "sampling", every_n_seconds=3600)) == [0, 1, 2, 3]
    assert len(lines) == 1 and "4/4" in lines[0]  # the interval never came: the end still reports
    lines.clear()
    assert list(track(range(4), "x", rank=1, every_n_seconds=0)) == [0, 1, 2, 3]
    monkeypatch.setenv("RANK", "2")  # torchrun's rank, for callers that do not pass one (feature extraction)
    assert list(track(iter(range(3)), "x", every_n_seconds=0)) == [0, 1, 2]
    assert lines == []
    monkeypatch.setenv("RANK", "0")
    list(track(iter(range(2)), "features", every_n_seconds=0))
    assert lines == ["features: 1 | elapsed 0:00:00", "features: 2 | elapsed 0:00:00"]  # no length: no ETA


def test_generation_reports_images_from_rank_zero_only(lines, tmp_path):
    from diffrop.evaluation.generate import generate
    from tests.test_generate import SCHEDULE, SPEC, CountingNet

    labels = torch.arange(6) % 4
    generate(CountingNet(), SCHEDULE, labels, tmp_path, SPEC, shard_size=2, rank=1, world_size=2)
    assert lines == []
    generate(CountingNet(), SCHEDULE, labels, tmp_path, SPEC, shard_size=2, rank=0, world_size=2)
    assert lines and lines[-1].startswith("sampling 4 images (2 shards): 4/4 (100%)")  # shards 0 and 2


def test_generation_progress_moves_inside_one_shard(lines, tmp_path):
    """One shard of 7 images in batches of 3: a line after 3, 6 and 7 images, not one at the end only."""
    from diffrop.evaluation.generate import generate
    from tests.test_generate import SCHEDULE, SPEC, CountingNet

    with patch("diffrop.runtime.progress.time.monotonic", side_effect=itertools.count(0, 60)):
        generate(CountingNet(), SCHEDULE, torch.arange(7) % 4, tmp_path, SPEC, shard_size=10)
    assert [line.split(" | ")[0] for line in lines] == [
        "sampling 7 images (1 shards): 3/7 (43%)",
        "sampling 7 images (1 shards): 6/7 (86%)",
        "sampling 7 images (1 shards): 7/7 (100%)",
    ]


def test_the_rich_bar_counts_the_runs_steps_after_a_resume(tmp_path):
    """Resumed mid-epoch at step 4 of 8 (max_epochs=-1, as every run here): the bar reads step 8/8 at the end, not
    an epoch of -2 and a batch count past the epoch's length."""
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel

    from diffrop.training.progress_bars import RichBar

    def fit(max_steps: int, ckpt: str | None) -> str:
        out = io.StringIO()
        bar = RichBar(refresh_rate=1, console_kwargs={"file": out, "force_terminal": True, "width": 200})
        trainer = L.Trainer(max_epochs=-1, max_steps=max_steps, callbacks=[bar], logger=False,
                            enable_checkpointing=False, enable_model_summary=False, limit_train_batches=6,
                            default_root_dir=tmp_path, accelerator="cpu")  # fmt: skip
        trainer.fit(BoringModel(), ckpt_path=ckpt)
        trainer.save_checkpoint(tmp_path / "last.ckpt")
        return out.getvalue()

    fit(4, None)
    shown = fit(8, str(tmp_path / "last.ckpt"))
    assert "8/8" in shown and "-2" not in shown and "Epoch" not in shown


def test_a_silent_stage_says_it_is_still_running_every_silence_interval(lines, monkeypatch):
    import time

    from diffrop.runtime import progress

    monkeypatch.setattr(progress, "SILENCE_S", 0.05)
    with progress.ticking(lambda: "scoring: F_8 (10 k-means runs)"):
        time.sleep(0.5)  # a stage that writes nothing itself
    assert len(lines) >= 3 and all(
        line.startswith("scoring: F_8 (10 k-means runs) | still running, elapsed") for line in lines
    )
    lines.clear()
    stage = ["features"]  # scoring's pattern: one block, the label names the running stage
    with progress.ticking(lambda: stage[0]):
        time.sleep(2.0)
        stage[0] = "k-means"
        time.sleep(0.25)
    # each stage's elapsed time counts from its own start, not the block's (issue 28: "F_8 ... elapsed 0:02:50")
    assert any(line.startswith("features | still running, elapsed 0:00:02") for line in lines)
    assert [line for line in lines if line.startswith("k-means")][-1].endswith("elapsed 0:00:00")
    lines.clear()
    with progress.ticking(lambda: "x", enabled=False):  # eval.progress=false
        time.sleep(0.2)
    monkeypatch.setenv("RANK", "1")
    with progress.ticking(lambda: "x"):  # ranks > 0 stay quiet
        time.sleep(0.2)
    assert lines == []
