"""The LightningModule: one forward pass per step, the loss terms over it, EMA of the weights. No math of its own."""

from __future__ import annotations

import copy
import random
import time
from functools import partial
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from diffrop.diffusion.schedule import NoiseSchedule
from diffrop.losses.objective import Objective
from diffrop.losses.step import Step

LABEL_DROP = ("batch", "sample")


class DiffusionModule(L.LightningModule):
    """Trains eps_theta with the configured objective and keeps an EMA copy (``self.ema``) used for sampling.

    label_drop: ``batch`` makes the whole batch unconditional with probability ``label_drop_prob`` (CBDM parity);
    ``sample`` drops labels per sample. Unconditional = zero label embedding in both cases.
    """

    def __init__(
        self,
        net: nn.Module,
        objective: Objective,
        schedule: NoiseSchedule,
        class_freq: Tensor,
        lr: float = 2e-4,
        warmup_steps: int = 5000,
        ema_decay: float = 0.9999,
        label_drop: str = "batch",
        label_drop_prob: float = 0.1,
        fused_adam: bool = True,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if label_drop not in LABEL_DROP:
            raise ValueError(f"model.label_drop={label_drop!r} is not one of {list(LABEL_DROP)}")
        if not 0 <= label_drop_prob <= 1:
            raise ValueError(f"model.label_drop_prob must be in [0, 1], got {label_drop_prob}")
        self.net, self.objective, self.schedule = net, objective, schedule
        self.ema = copy.deepcopy(net).requires_grad_(False).eval()
        self.register_buffer("class_freq", class_freq.float())
        self.lr, self.warmup_steps, self.ema_decay = lr, warmup_steps, ema_decay
        self.label_drop, self.label_drop_prob, self.fused_adam = label_drop, label_drop_prob, fused_adam
        self.run_config = run_config or {}
        self._clock: tuple[float, int] | None = None

    # --- training -------------------------------------------------------------------------------------
    def _condition_mask(self, y: Tensor) -> tuple[Tensor, bool]:
        if self.label_drop == "batch":
            dropped = random.random() < self.label_drop_prob  # host RNG: no device sync
            return torch.full_like(y, not dropped, dtype=torch.bool), dropped
        return torch.rand(y.shape, device=y.device) >= self.label_drop_prob, False

    def forward_step(self, x0: Tensor, y: Tensor, aug: Tensor | None = None) -> Step:
        """The one network evaluation of a training step; every loss term reads from the returned Step.

        ``aug``: DiffAugment parameters of each sample, fed to the network as conditioning (None without DiffAug).
        """
        t = torch.randint(0, self.schedule.num_steps, (x0.shape[0],), device=x0.device)
        eps = torch.randn_like(x0)
        xt = self.schedule.q_sample(x0, t, eps)
        cond, all_dropped = self._condition_mask(y)
        net = self.net if aug is None else partial(self.net, aug=aug)
        eps_hat = net(xt, t, y, cond)
        gather = (
            (lambda v: self.all_gather(v, sync_grads=True).flatten(0, 1))
            if self.trainer.world_size > 1
            else None
        )
        step = Step(x0, xt, t, eps, eps_hat, y, cond, all_dropped, self.schedule, self.class_freq, net)
        if gather is not None:
            step.gather = gather
        return step

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        x0, y, *aug = batch
        step = self.forward_step(x0, y, *aug)
        total, parts = self.objective(step)
        self.log("train/loss", total, prog_bar=True)
        self.log_dict({f"train/loss_{name}": value for name, value in parts.items()})
        self.log_dict({f"train/{name}": value for name, value in step.diagnostics.items()})
        self._log_throughput(x0.shape[0])
        return total

    def _log_throughput(self, batch_size: int) -> None:
        """images/s per device over the logging interval, from host time only (no device sync)."""
        every = self.trainer.log_every_n_steps
        if self.global_step % every:
            return
        now = (time.perf_counter(), self.global_step)
        if self._clock is not None and now[1] > self._clock[1]:
            rate = (now[1] - self._clock[1]) * batch_size / (now[0] - self._clock[0])
            self.log("train/images_per_sec", rate * self.trainer.world_size)
        self._clock = now

    @torch.no_grad()
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """EMA of the weights, ema <- decay * ema + (1 - decay) * net, as a few fused foreach kernels."""
        ema, net = list(self.ema.parameters()), list(self.net.parameters())
        torch._foreach_lerp_(ema, net, 1.0 - self.ema_decay)
        for b_ema, b_net in zip(self.ema.buffers(), self.net.buffers(), strict=True):
            b_ema.copy_(b_net)

    def configure_optimizers(self):
        fused = self.fused_adam and self.device.type == "cuda"
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr, fused=fused or None)
        warmup = (
            self.warmup_steps
        )  # CBDM code: lr * min(step, warmup) / warmup, so the very first step has lr 0
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: min(step, warmup) / warmup if warmup else 1.0
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- checkpoints carry their config ---------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["diffrop_config"] = self.run_config
        from lightning.fabric.utilities.seed import _collect_rng_states

        checkpoint["rng_states"] = _collect_rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng_states" in checkpoint:
            from lightning.fabric.utilities.seed import _set_rng_states

            _set_rng_states(checkpoint["rng_states"])
