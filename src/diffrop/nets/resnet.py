"""The classifier network of paper Table 3: the CIFAR ResNet-32, and its uint8-in wrapper for export.

The network is the CIFAR ResNet-32 of the LDAM line of work (Cao et al. 2019, after He et al. 2016): a 3x3 stem
with 16 channels, three stages of 5 basic blocks (16, 32, 64 channels, stride 2 between stages), option-A
shortcuts (subsample + zero-pad channels), global average pooling and a linear head; 0.46M parameters for 100
classes. ``depth`` = 6n + 2 picks other sizes (8 for smoke runs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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

    def __init__(self, num_classes: int, depth: int, in_channels: int = 3) -> None:
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
