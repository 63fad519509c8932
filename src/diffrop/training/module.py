"""The LightningModule: the forward passes the loss terms ask for, the terms over them, EMA of the weights. No math of
its own."""

from __future__ import annotations

import copy
import random
import time
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from diffrop.diffusion.compile import CompiledNet
from diffrop.diffusion.noising import draw_noise
from diffrop.diffusion.schedule import NoiseSchedule
from diffrop.losses.diagnostics import loss_diagnostics
from diffrop.losses.objective import Objective
from diffrop.losses.step import Step
from diffrop.training.lightning_internals import logs_this_step
from diffrop.training.nonfinite import NonFiniteGuard

LABEL_DROP = ("batch", "sample")


class DiffusionModule(L.LightningModule):
    """Trains eps_theta with the configured objective and keeps an EMA copy (``self.ema``) used for sampling.

    label_drop: ``batch`` makes the whole batch unconditional with probability ``label_drop_prob`` (CBDM parity);
    ``sample`` drops labels per sample. Unconditional = zero label embedding in both cases.

    Speed levers (each a config value): ``fused_adam`` (one kernel per step, and the device-side NaN skip of
    ``diffrop.training.nonfinite``), ``channels_last`` (NHWC convolutions: faster with bf16 tensor cores), ``compile``
    (``torch.compile`` of the network; ``self.net`` stays the parameter owner, so checkpoints carry no
    ``_orig_mod.`` keys; falls back to eager with a warning where compilation fails).
    """

    def __init__(
        self,
        net: nn.Module,
        objective: Objective,
        schedule: NoiseSchedule,
        class_freq: Tensor,
        *,  # the settings below come from the config (build.module_settings); their defaults live in YAML
        lr: float,
        warmup_steps: int,
        ema_decay: float,
        label_drop: str,
        label_drop_prob: float,
        fused_adam: bool,
        nonfinite: str,
        channels_last: bool | str,
        compile: bool,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if label_drop not in LABEL_DROP:
            raise ValueError(f"model.label_drop={label_drop!r} is not one of {list(LABEL_DROP)}")
        if not 0 <= label_drop_prob <= 1:
            raise ValueError(f"model.label_drop_prob must be in [0, 1], got {label_drop_prob}")
        if channels_last not in (True, False, "auto"):
            raise ValueError(f"model.channels_last must be true, false or auto, got {channels_last!r}")
        self.channels_last_mode, self.channels_last = channels_last, False
        self.net, self.objective, self.schedule = net, objective, schedule
        self.ema = copy.deepcopy(net).requires_grad_(False).eval()
        self.guard = NonFiniteGuard(nonfinite, list(objective.terms))
        self.compile_net = compile
        self._denoiser: Any = None  # the compiled net, deliberately not a registered submodule
        self.register_buffer("class_freq", class_freq.float())
        self.lr, self.warmup_steps, self.ema_decay = lr, warmup_steps, ema_decay
        self.label_drop, self.label_drop_prob, self.fused_adam = label_drop, label_drop_prob, fused_adam
        self.run_config = run_config or {}
        self._clock: tuple[float, int] | None = None
        self._log_step = False  # set by training_step: does Lightning write logs at this step?

    # --- training -------------------------------------------------------------------------------------
    def _condition_mask(self, y: Tensor) -> tuple[Tensor, bool]:
        if self.label_drop == "batch":
            dropped = random.random() < self.label_drop_prob  # host RNG: no device sync
            return torch.full_like(y, not dropped, dtype=torch.bool), dropped
        return torch.rand(y.shape, device=y.device) >= self.label_drop_prob, False

    def forward_step(self, x0: Tensor, y: Tensor, aug: Tensor | None = None) -> Step:
        """The network evaluation of a training step, as the loss terms declare it (``Objective.needs``): the noise
        grouping, then one call of the network on the batch and every extra forward the terms ask for (PCL partner
        / same_xt, CBDM), concatenated along the batch (docs/design.md section 1). The terms' draws (partners, y')
        come before that call. Every loss term only reads the returned Step.

        ``aug``: DiffAugment parameters of each sample, fed to the network as conditioning (None without DiffAug);
        an extra forward's row i keeps sample i's.
        """
        group_size = self.objective.noise_group_size
        t, eps, group = draw_noise(x0, self.schedule.num_steps, group_size)
        xt = self.schedule.q_sample(x0, t, eps)
        cond, all_dropped = self._condition_mask(y)
        step = Step(x0=x0, xt=xt, t=t, eps=eps, y=y, cond=cond, all_dropped=all_dropped, schedule=self.schedule,
                    class_freq=self.class_freq, group=group, group_size=group_size)  # fmt: skip
        wanted = [f for needs in self.objective.needs.values() for f in needs.forwards(step)]
        inputs = [
            torch.cat(v)
            for v in zip((xt, t, y, cond), *((f.xt, f.t, f.y, f.cond) for f in wanted), strict=True)
        ]
        if self.channels_last:
            inputs[0] = inputs[0].contiguous(memory_format=torch.channels_last)
        net = self._denoiser or self.net
        kwargs = {} if aug is None else {"aug": aug.repeat(1 + len(wanted), *[1] * (aug.dim() - 1))}
        step.eps_hat, *outputs = net(*inputs, **kwargs).split(len(y))
        step.extra_forwards = [f.evaluated(out) for f, out in zip(wanted, outputs, strict=True)]
        if self.trainer.world_size > 1:
            step.gather = lambda v: self.all_gather(v, sync_grads=True).flatten(0, 1)
        return step

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        # the one decision per batch: Lightning writes logs at this step (LogFirstAndLastStep included)
        self._log_step = logs_this_step(self.trainer)
        x0, y, *aug = batch
        step = self.forward_step(x0, y, *aug)
        total, parts = self.objective(step)
        self.guard.observe_loss(total, parts)
        self.log("train/loss", total)  # no prog_bar: a host sync per step (training.progress_bars)
        self.log_dict({f"train/loss_{name}": value for name, value in parts.items()})
        self.log_dict({f"train/{name}": value for name, value in step.diagnostics.items()})
        if self._log_step:
            self.log_dict({f"train/{k}": v for k, v in loss_diagnostics(step, parts).items()})
            self._log_throughput(x0.shape[0])
        return total

    def _log_throughput(self, batch_size: int) -> None:
        """images/s per device since the previous logging step, from host time only (no device sync)."""
        now = (time.perf_counter(), self.global_step)
        if self._clock is not None and now[1] > self._clock[1]:
            rate = (now[1] - self._clock[1]) * batch_size / (now[0] - self._clock[0])
            self.log("train/images_per_sec", rate * self.trainer.world_size)
        self._clock = now

    # --- optimizer step: NaN guard, EMA ------------------------------------------------------------------
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Flag a non-finite loss/gradient on the device; fused Adam skips the update when the flag is 1."""
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        found = self.guard.observe_grads(grads, self.global_step, distributed=self.trainer.world_size > 1)
        self.log("train/nonfinite_steps", self.guard.count.float())
        if getattr(optimizer, "defaults", {}).get("fused"):
            optimizer.found_inf = found  # read by Adam's fused kernel (as with GradScaler)
        elif self.guard.mode == "skip" and bool(found):  # host sync: only without fused Adam
            optimizer.zero_grad(set_to_none=True)  # Adam leaves parameters without gradients untouched

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.update_ema()
        if self.guard.mode == "stop" and (self.device.type == "cpu" or self._log_step):
            self.guard.check()

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema <- decay * ema + (1 - decay) * net, as a few fused foreach kernels.

        Runs right after the optimizer step (not in ``on_train_batch_end``, which Lightning calls *after* the
        checkpoint callback), so a checkpoint of step k holds the EMA of step k and resuming is exact.
        """
        ema, net = list(self.ema.parameters()), list(self.net.parameters())
        torch._foreach_lerp_(ema, net, 1.0 - self.ema_decay)
        for b_ema, b_net in zip(self.ema.buffers(), self.net.buffers(), strict=True):
            b_ema.copy_(b_net)

    # --- memory format and torch.compile -------------------------------------------------------------------
    def configure_model(self) -> None:
        """channels_last before the optimizer exists (``auto``: on CUDA only; on CPU it often slows convs down)."""
        device = self.trainer.strategy.root_device
        mode = self.channels_last_mode
        if mode is True or (mode == "auto" and device.type == "cuda"):
            self.channels_last = True
            self.net.to(memory_format=torch.channels_last)
            self.ema.to(memory_format=torch.channels_last)

    def on_fit_start(self) -> None:
        if self.compile_net and self._denoiser is None:
            self._denoiser = CompiledNet(self.net, self.device)

    def configure_gradient_clipping(
        self,
        optimizer: Any,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip here, not through the precision plugin: Lightning's mixed-precision plugin refuses to clip for a
        fused optimizer (it assumes a GradScaler unscales inside ``step``), even under bf16, which has no scaler.
        With fp16 (a scaler) Adam is not fused, so Lightning has unscaled the gradients before this hook."""
        if not gradient_clip_val:
            return
        if gradient_clip_algorithm == "value":  # both skip parameters without a gradient
            torch.nn.utils.clip_grad_value_(self.net.parameters(), gradient_clip_val, foreach=True)
        else:  # "norm", Lightning's default
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), gradient_clip_val, foreach=True)

    def configure_optimizers(self):
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        has_scaler = getattr(self.trainer.precision_plugin, "scaler", None) is not None  # fp16: unscale first
        fused = (
            self.fused_adam and not has_scaler and self.device.type in _get_fused_kernels_supported_devices()
        )
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
        checkpoint["net_data_shape"] = {  # what build.build_net needs besides the config: the data's shape
            "num_classes": self.net.num_classes, "in_channels": self.net.in_channels,
            "image_size": self.net.image_size}  # fmt: skip
        if self.guard.mode == "stop":
            self.guard.check()  # never write a checkpoint from after a non-finite step
        checkpoint["nonfinite"] = self.guard.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "nonfinite" in checkpoint:
            self.guard.load_state_dict(checkpoint["nonfinite"], self.device)
