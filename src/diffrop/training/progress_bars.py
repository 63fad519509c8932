"""Training progress that reaches a log file: the Lightning progress bars ``callbacks.progress_bar`` builds.

Rich's live bar redraws one terminal line; written to a file (a SLURM job's log, ``nohup``, the reproduce driver's
``<runs>/logs/*.log``) it shows nothing until the run ends, so a 300k-step run looks dead for hours. ``LogProgress``
writes a plain line every N steps and/or seconds instead, and ``progress_bar`` (what ``callbacks.progress_bar``
builds) picks it whenever stdout is not an interactive terminal.
"""

from __future__ import annotations

import math
import time
from datetime import timedelta
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from rich.console import Console
from torch import Tensor

from diffrop.runtime.progress import emit

KINDS = ("auto", "rich", "log")
LOSS_KEY = "train/loss"


def with_loss(trainer: L.Trainer, metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` plus the latest training loss, read from the device here, when a bar draws.

    The loss is logged without ``prog_bar=True`` because Lightning turns every prog_bar metric into a Python number
    after every step: on a GPU that is a host sync per step, which stalls the queue of kernels.
    """
    loss = trainer.callback_metrics.get(LOSS_KEY)
    return metrics | {LOSS_KEY: loss.item()} if isinstance(loss, Tensor) else metrics


def progress_bar(kind: str, refresh_rate: int, every_n_steps: int, every_n_seconds: float) -> ProgressBar:
    """``auto``: rich's live bar where rich can draw one (a terminal, Jupyter), ``LogProgress`` lines otherwise.

    ``refresh_rate`` is the rich bar's; ``every_n_steps`` / ``every_n_seconds`` the log lines' (0 switches one off).
    """
    if kind not in KINDS:
        raise ValueError(f"callbacks.progress_bar.kind={kind!r} is not one of {list(KINDS)}")
    if kind == "auto":
        console = Console()  # rich's own test: the same one that decides whether its live bar draws
        kind = "rich" if console.is_terminal or console.is_jupyter else "log"
    if kind == "rich":
        return RichBar(refresh_rate=refresh_rate)
    return LogProgress(every_n_steps=every_n_steps, every_n_seconds=every_n_seconds)


class RichBar(RichProgressBar):
    """Rich's live bar over the run's optimizer steps (``Training 1200/300000``), whose metrics (the loss: one host
    sync) are read every ``refresh_rate`` steps only; Lightning's bar reads them after every step.

    Lightning's bar counts batches of the current epoch under ``Epoch k/max_epochs - 1``: every run here ends at
    ``max_steps`` with ``max_epochs=-1``, so after a resume it read ``Epoch 0/-2 ... 2000/1032``.
    """

    def __init__(self, refresh_rate: int = 10, **kwargs: Any) -> None:
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        self._shown: dict[str, Any] | None = None

    @property
    def total_train_batches(self) -> float:
        return LogProgress.total_steps(self.trainer)

    def _get_train_description(self, current_epoch: int) -> str:
        return f"{'Training':{len(self.validation_description)}}"

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(
            trainer, module, outputs, batch, trainer.global_step - 1
        )  # shows step / total

    def get_metrics(self, trainer: L.Trainer, module: L.LightningModule) -> dict[str, Any]:
        if (
            self._shown is None
            or not trainer.training
            or trainer.global_step % max(1, self.refresh_rate) == 0
        ):
            self._shown = with_loss(trainer, super().get_metrics(trainer, module))
        return self._shown


class LogProgress(ProgressBar):
    """One line per interval: ``step 1200/300000 (0.4%) | train/loss 0.0312 | 1,930 img/s | elapsed 0:10:21 | ETA ...``.

    Written through the ``diffrop.runtime.progress`` logger, which under ``src/train.py`` (Hydra's job logging) reaches
    stdout and ``<run dir>/train.log`` with a timestamp; printed where no logging is configured. Rank zero only.
    img/s counts every rank's images since the previous line; the ETA extrapolates the rate since this process
    started training (a resumed run's earlier steps do not count).
    """

    def __init__(self, every_n_steps: int = 0, every_n_seconds: float = 30.0) -> None:
        super().__init__()
        if every_n_steps < 0 or every_n_seconds < 0 or not (every_n_steps or every_n_seconds):
            raise ValueError(
                "callbacks.progress_bar needs every_n_steps > 0 or every_n_seconds > 0 "
                f"(got {every_n_steps}, {every_n_seconds})"
            )
        self.every_n_steps, self.every_n_seconds = every_n_steps, every_n_seconds
        self._enabled = True
        self._start: tuple[float, int] = (0.0, 0)  # (time, step) when this process began training
        self._last: tuple[float, int] = (0.0, 0)  # (time, step) of the previous line
        self._images = 0  # since the previous line, all ranks

    # ProgressBar's interface: Lightning switches bars off around e.g. sanity checks
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def get_metrics(self, trainer: L.Trainer, module: L.LightningModule) -> dict[str, Any]:
        return with_loss(trainer, super().get_metrics(trainer, module))  # read only when a line is written

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        now = time.monotonic()
        self._start = self._last = (now, trainer.global_step)
        self._images = 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._images += len(batch[0]) * trainer.world_size
        now, step = time.monotonic(), trainer.global_step
        due = (self.every_n_steps and step % self.every_n_steps == 0) or (
            self.every_n_seconds and now - self._last[0] >= self.every_n_seconds
        )
        if due and step > self._last[1]:
            self._report(trainer, module, now)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.global_step > self._last[1]:
            self._report(trainer, module, time.monotonic())

    def _report(self, trainer: L.Trainer, module: L.LightningModule, now: float) -> None:
        step = trainer.global_step
        if self._enabled and trainer.is_global_zero:
            emit(self.line(step, self.total_steps(trainer), self.get_metrics(trainer, module), now))
        self._last, self._images = (now, step), 0

    @staticmethod
    def total_steps(trainer: L.Trainer) -> float:
        return trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches

    def line(self, step: int, total: float, metrics: dict[str, Any], now: float) -> str:
        """The progress line at ``step`` of ``total`` (``math.inf``: no end, no ETA)."""
        parts = [
            f"step {step}/{total:.0f} ({100 * step / total:.1f}%)" if math.isfinite(total) else f"step {step}"
        ]
        parts += [f"{k} {v:.4g}" for k, v in metrics.items() if k != "v_num" and isinstance(v, int | float)]
        if (dt := now - self._last[0]) > 0:
            parts.append(f"{self._images / dt:,.0f} img/s")
        done, elapsed = step - self._start[1], now - self._start[0]
        parts.append(f"elapsed {timedelta(seconds=round(elapsed))}")
        if math.isfinite(total) and done > 0:
            parts.append(f"ETA {timedelta(seconds=round(elapsed / done * max(total - step, 0)))}")
        return " | ".join(parts)
