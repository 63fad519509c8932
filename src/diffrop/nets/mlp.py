"""A class-conditional MLP denoiser for low-dimensional data (``data=gaussian_lt``), with the UNet's call signature.

Conditioning as in ``ClassConditionalUNet``: a sinusoidal timestep embedding (DDPM) through a small MLP, plus a
label embedding that ``cond[i] = False`` zeroes (the unconditional branch of classifier-free guidance), plus the
DiffAugment parameters when there are any. The embedding is added to every residual block's input.
"""

from __future__ import annotations

from diffusers.models.embeddings import get_timestep_embedding
from torch import Tensor, nn


class ResidualBlock(nn.Module):
    def __init__(self, width: int, emb_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.emb = nn.Linear(emb_dim, width)
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        z = self.fc1(nn.functional.silu(self.norm(h) + self.emb(emb)))
        return h + self.fc2(nn.functional.silu(z))


class ClassConditionalMLP(nn.Module):
    """eps_theta(x, t, y) for inputs [B, C, H, W] of any size (flattened to C * H * W features)."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int,
        width: int,
        depth: int,
        emb_dim: int,
        num_aug_params: int = 0,
    ) -> None:
        super().__init__()
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        features = in_channels * image_size * image_size
        self.emb_dim = emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_embedding = nn.Embedding(num_classes, emb_dim)
        self.aug_embedding = nn.Linear(num_aug_params, emb_dim, bias=False) if num_aug_params else None
        self.inp = nn.Linear(features, width)
        self.blocks = nn.ModuleList(ResidualBlock(width, emb_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, features))

    def forward(self, x: Tensor, t: Tensor, y: Tensor, cond: Tensor, aug: Tensor | None = None) -> Tensor:
        emb = self.time_mlp(
            get_timestep_embedding(t, self.emb_dim, downscale_freq_shift=1)
        )  # DDPM's sinusoids
        emb = emb + self.label_embedding(y) * cond[:, None].to(emb.dtype)  # zero = unconditional
        if self.aug_embedding is not None:
            aug = aug if aug is not None else x.new_zeros(x.shape[0], self.aug_embedding.in_features)
            emb = emb + self.aug_embedding(aug)
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h).reshape(x.shape)
