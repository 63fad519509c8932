"""Progress lines for log files: the bar chosen for a non-terminal, and what one line says."""

from __future__ import annotations

import io
import math

import pytest
from lightning.pytorch.callbacks import RichProgressBar

from diffrop.progress import LogProgress, progress_bar


def test_auto_picks_log_lines_when_stdout_is_not_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stdout", io.StringIO())  # like a file: not a TTY
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    bar = progress_bar("auto", every_n_steps=7)
    assert isinstance(bar, LogProgress) and bar.every_n_steps == 7


def test_auto_picks_rich_on_a_terminal(monkeypatch):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich's switch for "treat the output as a terminal"
    assert isinstance(progress_bar("auto"), RichProgressBar)


def test_explicit_kinds_and_bad_values():
    assert isinstance(progress_bar("rich", refresh_rate=3), RichProgressBar)
    assert isinstance(progress_bar("log"), LogProgress)
    with pytest.raises(ValueError, match="kind='tqdm'"):
        progress_bar("tqdm")
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
