"""Shared fixtures: fake CIFAR trees in torchvision's real format, tiny `src/train.py` runs in a subprocess, and a
tiny UNet. Constants and functions that tests import live in tests/helpers, never here."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from diffrop.nets.unet import ClassConditionalUNet
from tests.helpers.fakedata import bypass_cifar_md5, write_fake_cifar10, write_fake_cifar100
from tests.helpers.train_utils import THREADS, TINY_RUN_OVERRIDES, train_subprocess

torch.set_num_threads(THREADS)  # one by default: see THREADS


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``first`` run first: with the suite split over workers (``make test`` runs pytest-xdist), a long
    test that started last would leave the other workers idle at the end."""
    items.sort(key=lambda item: item.get_closest_marker("first") is None)  # stable: the rest keeps its order


@dataclass(frozen=True)
class FakeCifar:
    root: Path
    labels10: np.ndarray  # training labels of the fake CIFAR-10, in file order
    labels100: np.ndarray


@pytest.fixture(scope="session")
def fake_cifar(tmp_path_factory) -> Iterator[FakeCifar]:
    """One fake CIFAR-10 (5000 per class) and CIFAR-100 (500 per class) tree per test session (~300 MB on disk)."""
    root = tmp_path_factory.mktemp("cifar")
    yield FakeCifar(root, write_fake_cifar10(root), write_fake_cifar100(root))
    shutil.rmtree(root, ignore_errors=True)  # pytest keeps old temp dirs; these are large


@pytest.fixture
def cifar_md5_bypass(monkeypatch) -> None:
    """Let torchvision load the fake CIFAR files (their md5s are not the real ones). Test-only."""
    bypass_cifar_md5(monkeypatch)


@pytest.fixture(scope="session")
def tiny_run_overrides() -> tuple[str, ...]:
    return tuple(TINY_RUN_OVERRIDES)


@pytest.fixture(scope="session")
def run_train() -> Callable[..., subprocess.CompletedProcess]:
    """``run_train(*overrides, timeout=...)``: see ``train_subprocess``."""
    return train_subprocess


@pytest.fixture(scope="module")
def unet() -> ClassConditionalUNet:
    """A random 8x8, 3-class UNet (one per test module) whose labels visibly change its output."""
    torch.manual_seed(0)
    net = ClassConditionalUNet(
        num_classes=3, image_size=8, in_channels=3, base_channels=16, channel_mult=[1, 2],
        num_res_blocks=1, attn_resolutions=[], dropout=0.0, norm_groups=8,
    )  # fmt: skip
    with torch.no_grad():  # a visible label effect, so conditional and unconditional outputs differ
        net.label_embedding.weight.normal_(0, 3.0)
    return net.eval()
