"""The first and the last training step are always in metrics.csv, whatever ``trainer.log_every_n_steps`` is."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.helpers.train_utils import TINY_RUN_OVERRIDES, train_in_process


def logged_steps(run_dir: Path, column_prefix: str) -> list[int]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return sorted(
        int(r["step"]) for r in rows if any(k.startswith(column_prefix) and v != "" for k, v in r.items())
    )


def train(run_dir: Path, max_steps: int, every: int) -> None:
    overrides = [*TINY_RUN_OVERRIDES, f"trainer.max_steps={max_steps}", f"trainer.log_every_n_steps={every}"]
    train_in_process(overrides, run_dir)


# Lightning's own rule logs the batch with 0-based step k when (k + 1) % every == 0; the first (0) and the
# last (max_steps - 1) are added.
@pytest.mark.parametrize(
    ("max_steps", "every", "expected"),
    [(6, 50, [0, 5]), (10, 4, [0, 3, 7, 9]), (8, 4, [0, 3, 7]), (3, 1, [0, 1, 2])],
)
def test_first_and_last_step_are_logged(tmp_path, max_steps, every, expected):
    train(tmp_path, max_steps, every)
    assert logged_steps(tmp_path, "train/loss") == expected
    assert logged_steps(tmp_path, "lr-") == expected  # LearningRateMonitor follows the same steps


def test_a_resumed_run_logs_its_first_and_last_step_too(tmp_path):
    train(tmp_path, 6, 50)
    train(tmp_path, 9, 50)  # same run dir: resumes at step 6
    assert logged_steps(tmp_path, "train/loss") == [0, 5, 6, 8]


def test_logging_off_stays_off(tmp_path):
    train(tmp_path, 3, 0)
    assert not (tmp_path / "metrics.csv").is_file() or logged_steps(tmp_path, "train/loss") == []


def test_images_per_sec_is_the_rate_of_the_interval_ending_at_its_own_step(tmp_path, monkeypatch):
    """A fake clock: steps 0-8 take 1 s each, later steps 3 s. Logged at steps 0, 4, 9, 14, 19
    (batch 8), the rate over steps 4 -> 9 must read 8 img/s and over 9 -> 14 and 14 -> 19 8/3 img/s: values
    measured at the step they are written, not at an earlier one."""
    from diffrop.training import module as module_py

    clock = [0.0]
    update_ema = module_py.DiffusionModule.update_ema

    def timed_update_ema(self):
        clock[0] += 1.0 if self.global_step < 9 else 3.0  # global_step = k during step k
        return update_ema(self)

    monkeypatch.setattr(module_py.DiffusionModule, "update_ema", timed_update_ema)
    monkeypatch.setattr(module_py.time, "perf_counter", lambda: clock[0])
    train(tmp_path, 20, 5)
    with (tmp_path / "metrics.csv").open(newline="") as f:
        rates = {int(r["step"]): float(r["train/images_per_sec"]) for r in csv.DictReader(f)
                 if r.get("train/images_per_sec")}  # fmt: skip
    assert rates == pytest.approx({4: 8.0, 9: 8.0, 14: 8 / 3, 19: 8 / 3})
