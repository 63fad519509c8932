"""Training of the long-tail image classifier of paper Table 3 (network: ``diffrop.nets.resnet``).

Training follows LDAM's CE recipe: SGD momentum 0.9, lr 0.1 with a 5-epoch linear warm-up, x0.01 at epochs 160 and 180, weight decay 2e-4, 200 epochs,
random crop (padding 4) and horizontal flip.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from diffrop.nets.resnet import CifarResNet, Uint8Classifier


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
        self.log("train/loss", loss)  # the bars read it (training.progress_bars.with_loss)
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
