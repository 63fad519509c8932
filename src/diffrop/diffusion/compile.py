"""``torch.compile`` of a network that falls back to eager instead of failing a run (``model.compile``,
``sampler.compile``)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn


class CompiledNet:
    """``torch.compile(net, **options)`` that falls back to the eager ``net`` (with one warning) when compilation
    fails.

    Compilation happens lazily at the first call, so failures (no Triton, an old GPU, no C++ compiler for the CPU
    backend) surface there; that call is then re-run eagerly and the run goes on. ``setting`` names the option in
    the warning. Attributes other than the call (``in_channels``, ``image_size``, ...) are the network's.

    With ``mode="reduce-overhead"`` (``options``) it replays CUDA graphs; a replay overwrites the previous call's
    output, so outputs are cloned (one small copy per call) and may be kept across calls like eager ones.
    """

    def __init__(
        self, net: nn.Module, device: torch.device, setting: str = "model.compile", **options: Any
    ) -> None:
        self.net, self.fn, self.setting = net, None, setting
        self.clone_output = options.get("mode") == "reduce-overhead"
        if device.type == "cuda" and torch.cuda.get_device_capability(device) < (7, 0):
            warnings.warn(f"{setting}=true: this GPU is too old for Triton; running eagerly", stacklevel=2)
            return
        try:
            self.fn = torch.compile(net, **options)
        except Exception as err:  # torch.compile itself unsupported (e.g. Python version)
            warnings.warn(f"{setting}=true: torch.compile unavailable ({err}); running eagerly", stacklevel=2)

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        if self.fn is None:
            return self.net(*args, **kwargs)
        try:
            out = self.fn(*args, **kwargs)
        except Exception as err:
            warnings.warn(
                f"{self.setting}=true: compilation failed ({type(err).__name__}: {str(err)[:300]}); running eagerly",
                stacklevel=2,
            )
            self.fn = None
            return self.net(*args, **kwargs)
        return out.clone() if self.clone_output else out

    def __getattr__(self, name: str) -> Any:  # only called for names not set in __init__
        return getattr(self.net, name)
