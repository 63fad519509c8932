"""A NaN / inf loss or gradient: skip the optimizer step on the device, and stop (or count) without a host sync.

Two modes (``optim.nonfinite``):

- ``stop`` (default): training raises ``NonFiniteLossError`` naming the step and the loss term, and no checkpoint
  is written after the bad step, so ``last.ckpt`` stays the last good one.
- ``skip``: the optimizer step is skipped (weights, Adam moments and Adam's step count unchanged; the EMA keeps
  averaging the unchanged weights), and ``train/nonfinite_steps`` counts the skipped steps.

Why no per-step sync: the flag ``bad = any(~isfinite(loss terms)) | ~isfinite(|grad|)`` is computed on the device
and handed to fused Adam as ``found_inf`` (the same mechanism GradScaler uses), whose kernel then does nothing.
The host reads the flag only (a) every ``log_every_n_steps`` on accelerators, every step on CPU (where reading is
free), and (b) before every checkpoint save. The trade-off: in ``stop`` mode on a GPU, up to ``log_every_n_steps - 1``
further (skipped) steps run before the error is raised, and the error names the *first* bad step. Without fused
Adam (``optim.fused_adam=false``) ``skip`` has to read the flag every step to drop the gradients (one sync per step)
and ``stop`` lets the bad update through (nothing is saved after it anyway).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from diffrop.runtime.entry import UserError

NONFINITE = ("stop", "skip")


class NonFiniteLossError(RuntimeError, UserError):
    """Training produced a NaN or inf loss (or gradient) with ``optim.nonfinite=stop``."""


class NonFiniteGuard:
    """Device-side record of non-finite steps: count, first bad step, the loss terms' values at that step."""

    def __init__(self, mode: str, term_names: Sequence[str]) -> None:
        if mode not in NONFINITE:
            raise ValueError(f"optim.nonfinite={mode!r} is not one of {list(NONFINITE)}")
        self.mode, self.names = mode, ["total", *term_names]
        self.count: Tensor | None = None  # all device tensors, created on the first step
        self._values: Tensor | None = None

    def _init(self, device: torch.device) -> None:
        self.count = torch.zeros((), dtype=torch.long, device=device)
        self.first_step = torch.full((), -1, dtype=torch.long, device=device)
        self.first_values = torch.zeros(len(self.names), device=device)
        self.first_grad_norm = torch.zeros((), device=device)

    def observe_loss(self, total: Tensor, parts: dict[str, Tensor]) -> None:
        self._values = torch.stack([total.detach().float(), *(p.detach().float() for p in parts.values())])

    def observe_grads(self, grads: list[Tensor], step: int, distributed: bool = False) -> Tensor:
        """Fold this step into the record; returns the 0-dim float flag (1.0 = skip) for Adam's ``found_inf``.

        ``distributed``: OR the flag over DDP ranks (an async all-reduce, no host sync), so that a NaN loss on one
        rank with finite all-reduced gradients still makes every rank skip the same step.
        """
        values = self._values
        if self.count is None:
            self._init(values.device)
        elif self.count.device != values.device:  # restored from a checkpoint before the model moved
            for name in ("count", "first_step", "first_values", "first_grad_norm"):
                setattr(self, name, getattr(self, name).to(values.device))
        norms = torch._foreach_norm(grads) if grads else [values.new_zeros(())]
        grad_norm = torch.linalg.vector_norm(torch.stack(norms).float())
        bad = ~torch.isfinite(values).all() | ~torch.isfinite(grad_norm)
        if distributed:
            flag = bad.to(torch.int32)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            bad = flag.bool()
        first = bad & (self.first_step < 0)
        self.first_step = torch.where(first, step, self.first_step)
        self.first_values = torch.where(first, values, self.first_values)
        self.first_grad_norm = torch.where(first, grad_norm, self.first_grad_norm)
        self.count += bad
        return bad.float()

    def check(self) -> None:
        """Raise ``NonFiniteLossError`` if any step so far was non-finite (a host sync: call it rarely)."""
        if self.count is None or int(self.first_step) < 0:
            return
        values = dict(zip(self.names, self.first_values.tolist(), strict=True))
        bad_terms = [f"loss term '{k}' = {v}" for k, v in values.items() if k != "total" and not _finite(v)]
        what = ", ".join(bad_terms) or (
            f"gradient norm = {float(self.first_grad_norm)} (every loss term finite)"
            if _finite(values["total"])
            else f"total loss = {values['total']}"
        )
        raise NonFiniteLossError(
            f"non-finite loss at global step {int(self.first_step)}: {what} "
            f"({int(self.count)} non-finite step(s) so far). Training stopped; no checkpoint was written after "
            "that step, so checkpoints/last.ckpt is the last good state. Try a lower optim.lr, check the data, "
            "or set optim.nonfinite=skip to skip such steps"
        )

    def state_dict(self) -> dict[str, int]:
        return {"count": int(self.count) if self.count is not None else 0}

    def load_state_dict(self, state: dict[str, int], device: torch.device) -> None:
        self._init(device)
        self.count.fill_(int(state.get("count", 0)))


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")
