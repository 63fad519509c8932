"""LightningDataModule for every long-tailed image source: CIFAR10LT / CIFAR100LT (CBDM-exact), balanced CIFAR,
``imagefolder_lt`` and ``digits_lt`` (scikit-learn's bundled digits, for offline CPU runs).

Images stay uint8 until they reach the device; flipping and scaling to [-1, 1] happen there
(``augment_batch``), so workers only gather indices.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from diffrop.data.balance import StepBatchSampler, class_balancing_weights
from diffrop.data.datasets import ImageSet, load_cifar, load_digits, load_image_folder
from diffrop.data.device_batches import DeviceBatches, use_device_batches
from diffrop.data.diffaug import diff_augment
from diffrop.data.longtail import longtail_counts, select_longtail, shot_groups

SOURCES = ("cifar10", "cifar100", "imagefolder", "digits")
AUGMENTS = ("none", "diffaug")


class _Tensors(Dataset):
    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images[i], self.labels[i]


class _StepDataLoader(DataLoader):
    """Resumable by construction: its position is the trainer's global step (see ``StepBatchSampler``)."""

    def state_dict(self) -> dict:
        return {"start_step": self.batch_sampler.start_step}

    def load_state_dict(self, state_dict: dict) -> None:
        pass  # train_dataloader() already started the sampler at the restored global step


class LongTailDataModule(L.LightningDataModule):
    SOURCES: tuple[str, ...] = SOURCES  # a subclass with a source of its own names it here

    def __init__(
        self,
        name: str,
        source: str,
        root: str | None,
        imb_factor: float,
        image_size: int,
        batch_size: int,
        num_workers: int,
        seed: int,
        download: bool,
        balance: str,
        hflip: bool,
        augment: str,
        augment_prob: float,
        max_steps: int,
        on_device: bool | str,
        skip_corrupt: bool,
    ) -> None:
        super().__init__()
        if source not in self.SOURCES:
            raise ValueError(f"data.source={source!r} is not one of {list(self.SOURCES)}")
        class_balancing_weights(torch.zeros(1, dtype=torch.long), balance)  # validates data.balance early
        if batch_size <= 0:
            raise ValueError(f"data.batch_size must be > 0, got {batch_size}")
        if source == "imagefolder" and not root:
            raise ValueError(
                "data.root is not set: pass data.root=/path/to/tree (a folder with train/<class>/*.png)"
            )
        self.name, self.source, self.root = name, source, root
        self.imb_factor, self.image_size, self.batch_size = imb_factor, image_size, batch_size
        self.num_workers, self.seed, self.download, self.balance = num_workers, seed, download, balance
        if augment not in AUGMENTS:
            raise ValueError(f"data.augment={augment!r} is not one of {list(AUGMENTS)}")
        self.hflip, self.augment, self.augment_prob, self.max_steps = hflip, augment, augment_prob, max_steps
        use_device_batches(on_device, torch.zeros(0), num_workers)  # validates data.on_device early
        self.on_device, self.skip_corrupt = on_device, skip_corrupt
        self._full: ImageSet | None = None
        self._train: ImageSet | None = None

    # --- data -----------------------------------------------------------------------------------------
    def full_train_set(self) -> ImageSet:
        """The balanced training set the subset is drawn from (also the FID reference of docs/design.md section 3)."""
        if self._full is None:
            if self.source in ("cifar10", "cifar100"):
                self._full = load_cifar(self.root, int(self.source[5:]), train=True, download=self.download)
            elif self.source == "imagefolder":
                self._full = load_image_folder(self.root, self.image_size, self.skip_corrupt)
            else:
                self._full = load_digits(self.image_size)
        return self._full

    @property
    def train_set(self) -> ImageSet:
        """The long-tail subset of ``full_train_set``."""
        if self._train is None:
            self._train = self.longtail_subset(self.full_train_set())
        return self._train

    def longtail_subset(self, full: ImageSet) -> ImageSet:
        """``full``'s long-tail subset: n_c = int(n_max * imb ** (c / (C - 1))), seed-0 per-class shuffle.

        Also what src/classify.py trains on for a source without a test split, drawn from what it did not hold out.
        """
        available = torch.bincount(full.labels, minlength=len(full.class_names)).tolist()
        counts = longtail_counts(max(available), len(available), self.imb_factor)
        return full.subset(select_longtail(full.labels.numpy(), counts, self.seed))

    @property
    def num_classes(self) -> int:
        return len(self.train_set.class_names)

    @property
    def channels(self) -> int:
        return self.train_set.images.shape[1]

    @property
    def class_counts(self) -> list[int]:
        return torch.bincount(self.train_set.labels, minlength=self.num_classes).tolist()

    @property
    def class_freq(self) -> Tensor:
        counts = torch.tensor(self.class_counts, dtype=torch.float32)
        return counts / counts.sum()

    @property
    def shot_groups(self) -> dict[str, list[int]]:
        return shot_groups(self.class_counts)

    def summary(self) -> dict:
        return {
            "dataset": self.name,
            "source": self.source,
            "imb_factor": self.imb_factor,
            "num_images": sum(self.class_counts),
            "class_counts": self.class_counts,
            "class_names": self.train_set.class_names,
            "shot_groups": self.shot_groups,
        } | (  # image folders: what data.skip_corrupt=true left out
            {
                "skipped_unreadable": len(self.full_train_set().skipped),
                "skipped_files": self.full_train_set().skipped,
            }
            if self.source == "imagefolder"
            else {}
        )

    def write_summary(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / "data_summary.json"
        path.write_text(json.dumps(self.summary(), indent=2))
        return path

    # --- Lightning ------------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        data = self.train_set
        batches = StepBatchSampler(
            len(data.labels),
            self.batch_size,
            self.seed,
            class_balancing_weights(data.labels, self.balance),
            rank,
            world,
            self.max_steps,
        )
        batches.start_step = trainer.global_step if trainer else 0  # resume replays the same batch order
        if use_device_batches(self.on_device, data.images, self.num_workers):
            device = trainer.strategy.root_device if trainer else torch.device("cpu")
            return DeviceBatches(data.images, data.labels, batches, device)
        return _StepDataLoader(
            _Tensors(data.images, data.labels),
            batch_sampler=batches,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            # Its own generator: each new iterator draws a base seed, which from the global RNG would shift the
            # noise / timestep stream of a resumed run (the RNG state is restored before the iterator is made).
            generator=torch.Generator().manual_seed(self.seed),
        )

    def on_after_batch_transfer(
        self, batch: tuple[Tensor, Tensor], dataloader_idx: int
    ) -> tuple[Tensor, ...]:
        """(uint8 images, labels) -> (x in [-1, 1], labels[, DiffAugment parameters]) on the device."""
        images, labels = batch
        x = self.augment_batch(images)
        if self.augment == "diffaug":
            x, params = diff_augment(x, self.augment_prob)
            return x, labels, params
        return x, labels

    def augment_batch(self, images: Tensor) -> Tensor:
        """uint8 [B, C, H, W] -> float in [-1, 1], random horizontal flip (the CBDM augmentation)."""
        x = images.float().div_(127.5).sub_(1.0)
        if self.hflip:
            flip = torch.rand(x.shape[0], device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x
