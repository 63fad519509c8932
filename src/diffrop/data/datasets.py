"""Raw image sources as in-memory uint8 tensors: CIFAR (torchvision), an image-folder tree, scikit-learn digits.

Each loader returns ``ImageSet(images [N, C, H, W] uint8, labels [N] long, class_names)``; long-tail selection,
augmentation and batching happen elsewhere, so every source gets the same treatment.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class ImageSet:
    images: Tensor  # [N, C, H, W] uint8
    labels: Tensor  # [N] long
    class_names: list[str]
    skipped: list[str] = field(
        default_factory=list
    )  # unreadable files left out (image folders, skip_corrupt)

    def subset(self, index: np.ndarray) -> ImageSet:
        index_t = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(self.images[index_t], self.labels[index_t], self.class_names)


def load_cifar(root: str | Path, num_classes: int, train: bool = True, download: bool = False) -> ImageSet:
    """CIFAR-10/100 through torchvision (which checks the md5 of every file)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = {10: CIFAR10, 100: CIFAR100}[num_classes]
    root = Path(root).expanduser()
    try:
        ds = cls(str(root), train=train, download=download)
    except (RuntimeError, OSError) as err:  # not found / md5 mismatch, or no network for the download
        raise FileNotFoundError(
            f"CIFAR-{num_classes} not found (or corrupt, or the download failed) in {root / cls.base_folder}. Fix: run once with "
            f"data.download=true where the network allows, or copy the extracted '{cls.base_folder}' folder into "
            f"data.root={root} (torchvision layout). ({err})"
        ) from err
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images, torch.as_tensor(ds.targets, dtype=torch.long), list(ds.classes))


def resize_uint8(images: Tensor, size: int) -> Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = F.interpolate(
        images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return out.round().clamp(0, 255).to(torch.uint8)


def load_image_folder(root: str | Path, image_size: int, skip_corrupt: bool = False) -> ImageSet:
    """``root/train/<class>/*.png|jpg``, classes in sorted folder order, images resized to ``image_size``.

    Every file is read before deciding: one unreadable image (truncated, not an image) would otherwise stop a
    run with a PIL error naming no file, and the user would have to bisect the dataset. Bad files are named all
    at once in one error line, or, with ``skip_corrupt``, left out and listed in ``ImageSet.skipped``.
    """
    from PIL import Image

    train = Path(root).expanduser() / "train"
    if not train.is_dir():
        raise FileNotFoundError(
            f"data.root={root}: expected a folder {train} with one sub-folder of .png/.jpg images per class"
        )
    class_dirs = sorted(p for p in train.iterdir() if p.is_dir())
    if not class_dirs:
        raise FileNotFoundError(f"{train} has no class sub-folders (expected {train}/<class>/*.png or .jpg)")
    images, labels, bad = [], [], []
    for c, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(
                f"class folder {class_dir} has no .png/.jpg images; remove it or add images"
            )
        for f in files:
            try:
                with Image.open(f) as im:
                    im = im.convert("RGB").resize((image_size, image_size), Image.BICUBIC)
            except (OSError, SyntaxError, ValueError) as err:  # PIL's truncated / unidentified / broken chunk
                reason = (str(err).splitlines() or [type(err).__name__])[0]
                bad.append((f, f"{type(err).__name__}: {reason}"))
                continue
            images.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1))
            labels.append(c)
    if bad and not skip_corrupt:
        listing = "; ".join(f"{f} ({reason})" for f, reason in bad)
        raise ValueError(
            f"{len(bad)} unreadable image(s) under {train}: {listing}. Replace or delete them, or pass "
            "data.skip_corrupt=true to train without them"
        )
    found = torch.bincount(torch.as_tensor(labels, dtype=torch.long), minlength=len(class_dirs))
    if empty := [class_dirs[c].name for c in range(len(class_dirs)) if found[c] == 0]:
        raise ValueError(
            f"every image of class(es) {empty} under {train} is unreadable; nothing left to train on"
        )
    if bad:
        warnings.warn(
            f"skipped {len(bad)} unreadable image(s) under {train} (data.skip_corrupt=true)", stacklevel=2
        )
    skipped = [str(f) for f, _ in bad]
    return ImageSet(torch.stack(images), torch.as_tensor(labels), [p.name for p in class_dirs], skipped)


def load_digits(image_size: int = 16) -> ImageSet:
    """scikit-learn's bundled 8x8 digits (1,797 images, no download), upscaled and repeated to 3 channels."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = torch.from_numpy(bunch.images * (255.0 / 16.0)).round().to(torch.uint8)[:, None]  # [N, 1, 8, 8]
    images = resize_uint8(images, image_size).expand(-1, 3, -1, -1).contiguous()
    return ImageSet(images, torch.as_tensor(bunch.target, dtype=torch.long), [str(d) for d in range(10)])
