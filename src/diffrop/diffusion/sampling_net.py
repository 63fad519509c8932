"""The network a sampler calls: under bf16 autocast (``sampler.precision``) and/or compiled once for a whole
evaluation (``sampler.compile``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from diffrop.diffusion.compile import CompiledNet
from diffrop.diffusion.denoiser import Denoiser

if TYPE_CHECKING:  # sampling.py imports this module
    from diffrop.diffusion.sampling import SamplerSpec

PRECISIONS = ("fp32", "bf16")


def autocast_net(net: Denoiser, precision: str, device: torch.device) -> Denoiser:
    """``net`` itself for fp32; for bf16, ``net`` under ``torch.autocast(bfloat16)`` on ``device`` with its
    output cast back to float32, so that only the network runs in bf16 and the sampler's state and update
    arithmetic stay fp32. bf16 needs a CUDA device that supports it, or the CPU (slow there: for tests)."""
    if precision not in PRECISIONS:
        raise ValueError(f"sampler.precision={precision!r} is not one of {list(PRECISIONS)}")
    if precision == "fp32":
        return net
    if device.type not in ("cuda", "cpu") or (device.type == "cuda" and not torch.cuda.is_bf16_supported()):
        raise ValueError(
            f"sampler.precision=bf16 needs a bf16-capable CUDA device (or the CPU), got {device}"
        )

    def bf16_net(x: Tensor, t: Tensor, y: Tensor, cond: Tensor) -> Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return net(x, t, y, cond).float()

    return bf16_net


def sampling_net(net: Denoiser, spec: SamplerSpec, device: torch.device) -> Denoiser:
    """The network that draws the samples of ``spec``: ``net`` itself, or for
    ``sampler.compile=true`` compiled once for every batch to come, with static shapes (``sample_images`` pads the
    last batch to ``sampler.batch_size``) and, on CUDA, CUDA graphs (``mode="reduce-overhead"``: one graph replay
    per step instead of ~200 kernel launches). Falls back to eager with a warning where compilation fails."""
    if not spec.compile:
        return net
    mode = "reduce-overhead" if device.type == "cuda" else None
    return CompiledNet(net, device, setting="sampler.compile", mode=mode, dynamic=False)
