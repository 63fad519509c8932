"""DiffAugment-style augmentation (Zhao et al. 2020) with its parameters returned for conditioning (as EDM does).

The network sees the parameters as an extra embedding, so it learns the augmented distributions as separate
conditions and sampling with all-zero parameters means "no augmentation" (the DiffAug baseline of paper Table 1).
Each transform is applied to a sample independently with probability ``p``; a skipped transform has parameter 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

NUM_AUG_PARAMS = 8  # brightness, saturation-1, contrast-1, dx, dy, cutout on, cutout cx, cutout cy


def diff_augment(x: Tensor, p: float = 0.15) -> tuple[Tensor, Tensor]:
    """x in [-1, 1], [B, C, H, W] -> (augmented x, parameters [B, NUM_AUG_PARAMS]); zero parameters = identity."""
    b, _, h, w = x.shape

    def uniform(lo: float, hi: float) -> Tensor:
        return torch.empty(b, device=x.device).uniform_(lo, hi)

    def coin() -> Tensor:
        return (torch.rand(b, device=x.device) < p).to(x.dtype)

    # colour: brightness shift in [-0.5, 0.5] (on [0, 1] images), saturation x[0, 2], contrast x[0.5, 1.5]
    brightness = uniform(-0.5, 0.5) * coin()
    x = x + 2 * brightness[:, None, None, None]
    saturation = (uniform(0.0, 2.0) - 1) * coin()
    mean_c = x.mean(dim=1, keepdim=True)
    x = (x - mean_c) * (1 + saturation)[:, None, None, None] + mean_c
    contrast = (uniform(0.5, 1.5) - 1) * coin()
    mean_all = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean_all) * (1 + contrast)[:, None, None, None] + mean_all

    # translation by up to 1/8 of the image, zero padded; dx, dy in [-1, 1] units of that maximum
    on = coin()
    shift = torch.stack([uniform(-1, 1) * on, uniform(-1, 1) * on], dim=1)  # [B, 2]
    shift = (shift * (w // 8)).round() / (w // 8) if w >= 8 else shift * 0
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = -shift * (2 * (w // 8) / w)  # grid units: the full image spans 2
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)

    # cutout: a square of half the image side set to 0 (mid-grey) at a random centre
    cut = coin()
    centre = torch.stack([uniform(0, 1), uniform(0, 1)], dim=1) * cut[:, None]  # [B, 2] in [0, 1]
    ys = torch.arange(h, device=x.device)[None, :, None] / h
    xs = torch.arange(w, device=x.device)[None, None, :] / w
    inside = ((ys - centre[:, 1, None, None]).abs() < 0.25) & ((xs - centre[:, 0, None, None]).abs() < 0.25)
    x = torch.where((inside & cut.bool()[:, None, None])[:, None], torch.zeros_like(x), x)

    params = torch.stack([brightness, saturation, contrast, shift[:, 0], shift[:, 1], cut, *centre.T], dim=1)
    return x, params
