"""Long-tail image classifier for paper Table 3: ResNet-32 trained on CIFAR100LT, optionally plus generated images.

The network is the CIFAR ResNet-32 of the LDAM line of work (Cao et al. 2019, after He et al. 2016): a 3x3 stem
with 16 channels, three stages of 5 basic blocks (16, 32, 64 channels, stride 2 between stages), option-A
shortcuts (subsample + zero-pad channels), global average pooling and a linear head; 0.46M parameters for 100
classes. ``depth`` = 6n + 2 picks other sizes (8 for smoke runs). Training follows LDAM's CE recipe: SGD
momentum 0.9, lr 0.1 with a 5-epoch linear warm-up, x0.01 at epochs 160 and 180, weight decay 2e-4, 200 epochs,
random crop (padding 4) and horizontal flip.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffrop.data.datasets import ImageSet

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride, self.pad = stride, c_out - c_in  # option A: parameter-free shortcut

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        short = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.pad:
            short = F.pad(short, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + short)


class CifarResNet(nn.Module):
    """CIFAR ResNet-(6n+2) on float images normalised with the CIFAR mean / std."""

    def __init__(self, num_classes: int, depth: int = 32, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"classifier.depth must be 6n + 2 (8, 20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        blocks, c_in = [], 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                blocks.append(BasicBlock(c_in, c_out, stride if i == 0 else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate (pooled 64-d) features: also the feature space of the CPU quickstart study."""
        return self.blocks(self.stem(x)).mean((2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class Uint8Classifier(nn.Module):
    """uint8 images [B, C, H, W] -> logits: the exported form ``eval.classifier_ckpt`` loads (TorchScript)."""

    def __init__(self, net: CifarResNet) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(CIFAR_STD).view(1, 3, 1, 1) * 255)

    def forward(self, images: Tensor) -> Tensor:
        return self.net((images.float() - self.mean) / self.std)


def random_crop_flip(x: Tensor, pad: int = 4, flip: bool = True) -> Tensor:
    """Random crop with zero padding and horizontal flip, per image, on the device (no Python loop)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b, 1, 1), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (b, 1, 1), device=x.device)
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + dy).expand(b, h, w)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + dx).expand(b, h, w)
    if flip:
        mirror = torch.rand(b, 1, 1, device=x.device) < 0.5
        cols = torch.where(mirror, 2 * dx + w - 1 - cols, cols)
    batch = torch.arange(b, device=x.device).view(b, 1, 1).expand(b, h, w)
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)


def classification_metrics(preds: Tensor, targets: Tensor, num_classes: int) -> dict[str, float]:
    """Accuracy, macro precision and macro recall, in percent.

    Macro = unweighted mean over the ``num_classes`` classes; a class that is never predicted has precision 0
    (scikit-learn's ``zero_division=0``), a class absent from ``targets`` is left out of the recall mean.
    """
    confusion = torch.bincount(targets * num_classes + preds, minlength=num_classes**2).view(
        num_classes, num_classes
    )
    tp = confusion.diag().double()
    predicted, actual = confusion.sum(0).double(), confusion.sum(1).double()
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = tp[actual > 0] / actual[actual > 0]
    return {
        "accuracy": 100.0 * float(tp.sum() / len(targets)),
        "macro_precision": 100.0 * float(precision.mean()),
        "macro_recall": 100.0 * float(recall.mean()),
    }


def load_generated(path: str | Path, num_classes: int, limit: int | None = None) -> ImageSet:
    """Generated images from src/eval.py's ``samples.npz`` (uint8 NHWC ``images`` and ``labels``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"generated samples {path} not found; run src/eval.py on a checkpoint first")
    with np.load(path) as blob:
        if "images" not in blob or "labels" not in blob:
            raise ValueError(
                f"{path} holds {sorted(blob.files)}; expected 'images' (N, H, W, C uint8) and 'labels'"
            )
        images, labels = blob["images"][:limit], blob["labels"][:limit]
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"{path}: images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{path}: labels outside [0, {num_classes}) — generated for another dataset?")
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    return ImageSet(tensor, torch.as_tensor(labels, dtype=torch.long), [str(c) for c in range(num_classes)])


def split_per_class(full: ImageSet, test_fraction: float, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """A held-out test split, the same fraction of every class (for sources without one, e.g. digits)."""
    rng = np.random.default_rng(seed)
    labels = full.labels.numpy()
    test = [
        idx[: round(test_fraction * len(idx))]
        for c in np.unique(labels)
        for idx in [rng.permutation(np.flatnonzero(labels == c))]
    ]
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return full.subset(train_idx), full.subset(test_idx)


class ClassifierModule(L.LightningModule):
    """Cross-entropy training of a CifarResNet on uint8 batches; augmentation and scaling on the device."""

    def __init__(
        self,
        net: CifarResNet,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 2e-4,
        warmup_epochs: int = 5,
        milestones: tuple[int, ...] = (160, 180),
        gamma: float = 0.01,
        flip: bool = True,
    ) -> None:
        super().__init__()
        self.net, self.classifier = net, Uint8Classifier(net)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.warmup_epochs, self.milestones, self.gamma, self.flip = (
            warmup_epochs,
            tuple(milestones),
            gamma,
            flip,
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(images)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        logits = self.classifier(random_crop_flip(images, flip=self.flip))
        loss = F.cross_entropy(logits, labels)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(
            self.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )

        def factor(epoch: int) -> float:  # LDAM: linear warm-up, then step decay
            if epoch < self.warmup_epochs:
                return (epoch + 1) / self.warmup_epochs
            return self.gamma ** sum(epoch >= m for m in self.milestones)

        return [opt], [torch.optim.lr_scheduler.LambdaLR(opt, factor)]

    @torch.no_grad()
    def predict_all(self, images: Tensor, batch_size: int = 500) -> Tensor:
        self.eval()
        out = [self.classifier(b.to(self.device)).argmax(1).cpu() for b in images.split(batch_size)]
        return torch.cat(out)
