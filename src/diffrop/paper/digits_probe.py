"""A digits classifier as feature space and judge for CPU studies (Inception is far too slow on a CPU).

A CIFAR ResNet-20 trained on the balanced scikit-learn digits at 16x16: its pooled 64-d penultimate features stand
in for Inception features (per-shot FID, KID, precision / recall against the balanced digits of the same classes), and
its predictions say whether a generated class-c image looks like a c. The predictions measure the class overlap
DiffROP sets out to reduce: ``confusion`` is the share of class-c samples assigned to another class (100 - acc),
``to_head`` the share assigned to a many-shot class other than c (tail samples drifting towards the head).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from diffrop.data.datasets import load_digits
from diffrop.evaluation.classification import classification_metrics, shot_accuracy, split_per_class
from diffrop.evaluation.metrics import fid_from_features, mmd2_unbiased, precision_recall
from diffrop.nets.resnet import CifarResNet
from diffrop.training.classifier import ClassifierModule

PROBE_SIZE = 16  # at 8x8 the ResNet-20 reaches ~89% held-out accuracy, at 16x16 ~98%


def train_probe(epochs: int = 15, seed: int = 0) -> tuple[ClassifierModule, float]:
    """ResNet-20 on 70% of the balanced digits; returns it and its held-out accuracy (%), a sanity check."""
    L.seed_everything(seed)
    train, test = split_per_class(load_digits(PROBE_SIZE), 0.3)
    module = ClassifierModule(
        CifarResNet(10, depth=20),
        lr=0.05,
        warmup_epochs=1,
        milestones=(int(0.75 * epochs),),
        gamma=0.1,
        flip=False,
    )
    loader = DataLoader(
        TensorDataset(train.images, train.labels), batch_size=64, shuffle=True, drop_last=True
    )
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, loader)
    acc = classification_metrics(module.predict_all(test.images), test.labels, 10)["accuracy"]
    return module.eval(), acc


def load_or_train_probe(path: Path, epochs: int = 15, seed: int = 0) -> tuple[ClassifierModule, float]:
    """The probe cached at ``path`` (state dict + held-out accuracy), trained once when missing."""
    module = ClassifierModule(CifarResNet(10, depth=20))
    if path.is_file():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        module.load_state_dict(blob["state_dict"])
        return module.eval(), float(blob["accuracy"])
    module, acc = train_probe(epochs, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "accuracy": acc}, path)
    return module, acc


@torch.no_grad()
def probe_outputs(module: ClassifierModule, images: Tensor) -> tuple[Tensor, Tensor]:
    """(64-d features, predicted class) of uint8 images [N, 3, 16, 16]."""
    module.eval()
    c = module.classifier
    feats = torch.cat([c.net.features((b.float() - c.mean) / c.std) for b in images.split(500)])
    return feats, c.net.head(feats).argmax(1)


def score_by_group(
    real: tuple[Tensor, Tensor],
    fake: tuple[Tensor, Tensor, Tensor],
    groups: Mapping[str, Sequence[int]],
    k: int = 5,
) -> dict[str, dict[str, float]]:
    """Per shot group: FID, KID and precision / recall against the real images of the same classes (probe
    features), accuracy, confusion and to_head in percent. ``real`` = (features, labels); ``fake`` = (features,
    labels, predicted classes). KID is the unbiased squared MMD (cubic polynomial kernel) of the whole two sets:
    a group holds a few hundred samples, so KID's subsets would all be the whole fake set anyway; unlike FID it
    is unbiased at that size, so small differences between arms are not a sample-size artefact."""
    (real_feats, real_labels), (fake_feats, labels, preds) = real, fake
    head = torch.as_tensor(list(groups["many"]))
    accuracy = shot_accuracy(preds, labels, groups)
    out = {}
    for group, classes in groups.items():
        r, f = (
            torch.isin(real_labels, torch.as_tensor(list(classes))),
            torch.isin(labels, torch.as_tensor(list(classes))),
        )
        pr = precision_recall(real_feats[r], fake_feats[f], k=k)
        to_head = (torch.isin(preds[f], head) & (preds[f] != labels[f])).double().mean().item()
        out[group] = {
            "fid": fid_from_features(real_feats[r], fake_feats[f]),
            "kid": mmd2_unbiased(real_feats[r], fake_feats[f]),
            "precision": pr["precision"],
            "recall": pr["recall"],
            "acc": 100 * accuracy[group],
            "confusion": 100 * (1 - accuracy[group]),
            "to_head": 100 * to_head,
        }
    return out
