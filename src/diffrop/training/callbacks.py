"""Training callbacks: a resumable checkpoint on interruption, a class-conditional sample grid (PNG + W&B), and
the first and last training step always logged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import RichModelSummary
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.model_summary import get_human_readable_count
from rich import get_console
from rich.table import Table
from torchvision.utils import save_image

from diffrop.diffusion.sampling import SamplerSpec, sample
from diffrop.runtime.progress import emit, ticking


class SampleGrid(L.Callback):
    """Every ``every_n_steps`` steps (and at the end) draw ``per_class`` images per class from the EMA net with the
    run's ``sampler`` (``build.build_callbacks`` passes it: the recipe the checkpoint stores for evaluation), from
    the same noise every time so that grids are comparable.

    The grid is small (classes x per_class images): even the paper's guided DDPM-1000 every 20k steps, 80 images x
    1000 steps x 2 forwards, costs about 2% of training (20k steps x 128 images x ~3 forwards); ``every_n_steps``
    sets how often.
    """

    def __init__(
        self,
        out_dir: str,
        sampler: SamplerSpec,
        every_n_steps: int,
        per_class: int,
        max_classes: int = 10,
        seed: int = 0,
    ) -> None:
        self.out_dir, self.sampler, self.every_n_steps = Path(out_dir), sampler, every_n_steps
        self.per_class, self.max_classes, self.seed = per_class, max_classes, seed
        self._drawn_at: int | None = None  # the step of the last grid

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # a sampler that does not fit the schedule (DDPM with steps != T) fails now, not at the first grid
        self.sampler.timesteps(module.schedule)

    @rank_zero_only
    def draw(self, trainer: L.Trainer, module: L.LightningModule) -> Path:
        net = module.ema
        classes = min(self.max_classes, net.num_classes)
        y = torch.arange(classes, device=module.device).repeat_interleave(self.per_class)
        shape = (len(y), net.in_channels, net.image_size, net.image_size)
        emit(
            f"sample grid of step {trainer.global_step}: {len(y)} images, {self.sampler.name} {self.sampler.steps} steps"
        )
        gen = torch.Generator(module.device).manual_seed(
            self.seed
        )  # same noise every time: grids are comparable
        with ticking(lambda: f"sample grid of step {trainer.global_step}"):
            x = sample(net, module.schedule, y, shape, self.sampler, gen)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"step_{trainer.global_step:07d}.png"
        save_image((x + 1) / 2, path, nrow=self.per_class)  # one row per class
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("samples/grid", [str(path)], step=trainer.global_step)
        return path

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._draw_once(trainer, module)

    def on_train_end(self, trainer, module) -> None:
        self._draw_once(trainer, module)

    def _draw_once(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """One grid per step: the end of a run whose last step is a multiple of ``every_n_steps`` has one already."""
        if self._drawn_at != trainer.global_step:
            self._drawn_at = trainer.global_step
            self.draw(trainer, module)


class CheckpointOnInterrupt(L.Callback):
    """Ctrl-C or SIGTERM (pre-emption) writes ``last.ckpt`` before exiting, so ``ckpt_path=auto`` resumes there.

    Other exceptions (e.g. a NaN loss) deliberately write nothing: the last periodic checkpoint stays the last good one.
    Unlike Lightning's ``OnExceptionCheckpoint``, the file is kept after teardown.

    What each way of stopping a run leaves behind (tests/test_resume.py checks the first two on CPU):

    - SIGTERM (``scancel``, SLURM time limit or pre-emption, which send SIGTERM and SIGKILL ``KillWait`` s later):
      Lightning 2.6 only sets a flag in its handler and raises ``SIGTERMException`` after the current step; this
      callback then writes ``last.ckpt`` at that step and src/train.py exits with 143, its last line the command
      that resumes the run exactly (``python src/train.py hydra.run.dir=<run>``; ``ckpt_path=auto``).
    - Ctrl-C: Lightning catches the ``KeyboardInterrupt`` in ``Trainer.fit``; this callback writes ``last.ckpt`` and
      src/train.py exits with 130 and the same resume line (``diffrop.runtime.entry.guarded_run``).
    - SIGKILL / power loss: nothing can be written; the last periodic checkpoint is the resume point, and it is
      intact because checkpoints are written atomically (``diffrop.training.checkpoint_io``).
    - SLURM auto-requeue: under SLURM, Lightning's ``SLURMEnvironment(auto_requeue=True)`` (the default) handles
      the requeue signal (SIGUSR1; ask for it with ``#SBATCH --signal=USR1@90``): it writes ``hpc_ckpt_N.ckpt`` in
      ``trainer.default_root_dir`` (the run dir) and calls ``scontrol requeue``. The requeued job reruns the same
      command; ``ckpt_path=auto`` takes the newest of ``last.ckpt`` and ``hpc_ckpt_*.ckpt``. The run dir must not
      depend on the start time for this (set ``hydra.run.dir``, as the paper recipes do).
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt | SIGTERMException):
            trainer.save_checkpoint(self.path, weights_only=False)  # the whole state, to resume from


class ModelSummary(RichModelSummary):
    """Lightning's rich summary without its FLOPs column and total: Lightning counts FLOPs only on the module's
    ``example_input_array``, which ours has none of, so they always read 0."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int = 0,
        **summarize_kwargs: Any,
    ) -> None:
        kept = [(name, values) for name, values in summary_data if name != "FLOPs"]
        table = Table(header_style="bold magenta")
        for name, _ in kept:
            table.add_column(name, justify="right" if name.startswith("Params") else "left")
        for row in zip(*(values for _, values in kept), strict=True):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        frozen = total_parameters - trainable_parameters
        console.print(
            f"Params: {get_human_readable_count(trainable_parameters)} trainable, "
            f"{get_human_readable_count(frozen)} non-trainable ({model_size:.1f} MB)\n"
            f"Modules: {total_training_modes['train']} in train mode, {total_training_modes['eval']} in eval mode"
        )


class LogFirstAndLastStep(L.Callback):
    """Log the first step of every fit (a resume too) and the last step, whatever ``log_every_n_steps`` is.

    Lightning sends logged values to the loggers only on steps that are multiples of ``log_every_n_steps``: a run
    shorter than that leaves no ``metrics.csv`` at all, and the last step of a run is usually missing from it. The
    logger connector and ``LearningRateMonitor`` read ``Trainer.log_every_n_steps`` at the start of each batch, so
    this sets it to 1 for those two batches and back otherwise (no private Lightning API). It must come before
    ``LearningRateMonitor`` in the callback list (first in configs/callbacks/default.yaml) so that the learning
    rate is logged on those steps too. ``log_every_n_steps=0`` (logging off) is left alone.
    """

    def __init__(self) -> None:
        self.every: int | None = None
        self.start_step = 0

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.every, self.start_step = trainer.log_every_n_steps, trainer.global_step

    def on_train_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        if self.every:
            trainer.log_every_n_steps = 1 if self.first_or_last(trainer, batch_idx) else self.every

    def first_or_last(self, trainer: L.Trainer, batch_idx: int) -> bool:
        step = trainer.global_step  # optimizer steps done before this batch
        if step == self.start_step:
            return True
        if trainer.max_steps > 0:
            return step + 1 >= trainer.max_steps
        last_epoch = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        return last_epoch and batch_idx + 1 >= trainer.num_training_batches

    def restore(self, trainer: L.Trainer) -> None:
        if self.every is not None:
            trainer.log_every_n_steps = self.every

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.restore(trainer)

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        self.restore(trainer)
