"""``data=gaussian_lt``: a long-tailed Gaussian mixture with known answers, trained exactly like the image sources.

The long-tail subset, batch order and resumption are ``LongTailDataModule``'s; only the source differs: n_max
draws per class from a ``GaussianMixture`` (seeded by ``data.seed``), stored as float ``[N, D, 1, 1]`` so the
networks and losses, which flatten per sample, run unchanged. No augmentation: the draws are already in model
space.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffrop.data.datamodule import LongTailDataModule
from diffrop.data.datasets import ImageSet
from diffrop.data.gaussian_mixture import GaussianMixture, plane_mixture
from diffrop.data.longtail import longtail_counts


class GaussianLTDataModule(LongTailDataModule):
    SOURCES = ("gaussian",)

    def __init__(
        self,
        name: str,
        plane_means: list[list[float]],
        plane_covs: list[list[list[float]]],
        dim: int,
        off_plane_var: float,
        n_max: int,
        imb_factor: float,
        batch_size: int,
        seed: int,
        max_steps: int,
        embedding_seed: int,
        source: str,
        image_size: int,
        augment: str,
        balance: str,
        num_workers: int,
        on_device: bool | str,
    ) -> None:
        if image_size != 1 or augment != "none":
            raise ValueError(
                "data=gaussian_lt stores [N, dim, 1, 1] draws: image_size must be 1, augment none"
            )
        super().__init__(
            name=name, source=source, root=None, imb_factor=imb_factor, image_size=1, batch_size=batch_size,
            num_workers=num_workers, seed=seed, download=False, balance=balance, hflip=False, augment=augment,
            augment_prob=0.0, max_steps=max_steps, on_device=on_device, skip_corrupt=False,
        )  # fmt: skip
        if len(plane_means) != len(plane_covs):
            raise ValueError("data.plane_means and data.plane_covs must name the same number of classes")
        self.n_max, self.dim = n_max, dim
        counts = longtail_counts(n_max, len(plane_means), imb_factor)
        weights = [n / sum(counts) for n in counts]  # the unconditional branch sees the training frequencies
        self.mixture: GaussianMixture = plane_mixture(
            [tuple(m) for m in plane_means],
            [tuple(tuple(r) for r in s) for s in plane_covs],
            dim,
            off_plane_var,
            weights,
            embedding_seed,
        )

    def full_train_set(self) -> ImageSet:
        """n_max draws of every class; ``train_set`` keeps n_c of each (the image sources' long-tail rule)."""
        if self._full is None:
            gen = torch.Generator().manual_seed(self.seed)
            x, y = self.mixture.sample([self.n_max] * self.mixture.num_classes, gen)
            names = [f"class{c}" for c in range(self.mixture.num_classes)]
            self._full = ImageSet(x.float()[:, :, None, None], y, names)
        return self._full

    def augment_batch(self, images: Tensor) -> Tensor:
        return images  # float draws: no scaling, no flips

    def summary(self) -> dict:
        return super().summary() | {"dim": self.dim, "n_max": self.n_max}
