"""The DDPM CIFAR UNet (Ho et al. 2020) with class conditioning, built on diffusers' ``UNet2DModel``.

With the default config this is exactly the network of the CBDM / DiffROP code: ch 128, mult (1, 2, 2, 2),
2 res blocks, attention at 16x16 and in the middle, dropout 0.1, GroupNorm 32, and a label embedding added to the
time embedding: 35,751,427 parameters for 10 classes. The unconditional branch of classifier-free guidance is
"no label embedding" (a zero vector), as in CBDM; ``cond[i] = False`` selects it per sample.
"""

from __future__ import annotations

from collections.abc import Sequence

from diffusers import UNet2DModel
from torch import Tensor, nn


class ClassConditionalUNet(nn.Module):
    def __init__(
        self,
        num_classes: int,
        image_size: int,
        in_channels: int,
        base_channels: int,
        channel_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        dropout: float,
        norm_groups: int,
        num_aug_params: int = 0,
    ) -> None:
        super().__init__()
        if image_size % 2 ** (len(channel_mult) - 1):
            raise ValueError(f"model: image_size={image_size} must be divisible by 2^(len(channel_mult) - 1)")
        resolutions = [image_size // 2**i for i in range(len(channel_mult))]
        down = [("AttnDownBlock2D" if r in attn_resolutions else "DownBlock2D") for r in resolutions]
        up = [b.replace("Down", "Up") for b in reversed(down)]
        emb_dim = 4 * base_channels
        self.num_classes = num_classes
        self.image_size, self.in_channels = image_size, in_channels
        self.unet = UNet2DModel(
            sample_size=image_size,
            in_channels=in_channels,
            out_channels=in_channels,
            block_out_channels=tuple(base_channels * m for m in channel_mult),
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            layers_per_block=num_res_blocks,
            dropout=dropout,
            attention_head_dim=None,  # one head, as the DDPM AttnBlock
            norm_num_groups=norm_groups,
            norm_eps=1e-6,
            flip_sin_to_cos=False,
            freq_shift=1,
            downsample_padding=0,
            class_embed_type="identity",  # we add our own label embedding to the time embedding
        )
        self.label_embedding = nn.Embedding(num_classes, emb_dim)
        # DiffAugment conditioning (EDM-style): the augmentation parameters enter as an extra embedding, so sampling
        # with all-zero parameters means "no augmentation".
        self.aug_embedding = nn.Linear(num_aug_params, emb_dim, bias=False) if num_aug_params else None

    def forward(self, x: Tensor, t: Tensor, y: Tensor, cond: Tensor, aug: Tensor | None = None) -> Tensor:
        emb = self.label_embedding(y) * cond[:, None].to(x.dtype)  # [B, emb]; zero = unconditional
        if self.aug_embedding is not None:
            aug = aug if aug is not None else x.new_zeros(x.shape[0], self.aug_embedding.in_features)
            emb = emb + self.aug_embedding(aug)
        return self.unet(x, t, class_labels=emb).sample
