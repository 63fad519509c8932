"""Fake datasets in the real on-disk formats, for tests that must run offline.

- CIFAR-10 / CIFAR-100 in torchvision's pickled layout (``cifar-10-batches-py/data_batch_1..5, test_batch,
  batches.meta``; ``cifar-100-python/train, test, meta``). Labels and per-class counts are real (5000 / 500
  per class, shuffled across the files as in the real data); pixels are zeros except the first three bytes of
  the red channel, which store the image's index in the training set (``decode_index`` reads it back), so a
  test can check exactly WHICH images were selected.
- An image-folder tree ``root/train/<class>/*.png``.

torchvision verifies the md5 of every CIFAR file; ``bypass_cifar_md5`` switches that off for one test (never in
the product).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
LABEL_SEED = 1234  # the order of labels in the fake files (any fixed shuffle, like the real files)


def cifar_labels(num_classes: int, per_class: int, seed: int = LABEL_SEED) -> np.ndarray:
    """Training labels in file order: exactly ``per_class`` of each class, shuffled."""
    return np.random.RandomState(seed).permutation(np.repeat(np.arange(num_classes), per_class))


def encode_index(index: np.ndarray) -> np.ndarray:
    """Rows of 3072 uint8 (CIFAR's R|G|B plane layout), zero except the index in the first three red pixels."""
    rows = np.zeros((len(index), 3 * 32 * 32), dtype=np.uint8)
    rows[:, 0] = index // 65536
    rows[:, 1] = (index // 256) % 256
    rows[:, 2] = index % 256
    return rows


def decode_index(images) -> np.ndarray:
    """Inverse of ``encode_index`` for images as [N, 3, 32, 32] (tensor or array): row 0, columns 0..2 of red."""
    px = np.asarray(images[:, 0, 0, :3], dtype=np.int64)
    return px[:, 0] * 65536 + px[:, 1] * 256 + px[:, 2]


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the real files are Python 2 pickles


def write_fake_cifar10(root: str | Path, per_class: int = 5000, test_per_class: int = 2) -> np.ndarray:
    """Write ``root/cifar-10-batches-py`` (5 train batches + test batch + meta); returns the train labels."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    labels = cifar_labels(10, per_class)
    index = np.arange(len(labels))
    for b, chunk in enumerate(np.array_split(index, 5), start=1):
        _dump(
            folder / f"data_batch_{b}",
            {
                "batch_label": f"training batch {b} of 5",
                "labels": labels[chunk].tolist(),
                "data": encode_index(chunk),
                "filenames": [f"img_{i:05d}.png" for i in chunk],
            },
        )
    test_labels = np.repeat(np.arange(10), test_per_class)
    _dump(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": test_labels.tolist(),
            "data": encode_index(np.arange(len(test_labels))),
            "filenames": [f"test_{i:05d}.png" for i in range(len(test_labels))],
        },
    )
    _dump(
        folder / "batches.meta",
        {"num_cases_per_batch": 10000, "label_names": CIFAR10_CLASSES, "num_vis": 3072},
    )
    return labels


def write_fake_cifar100(root: str | Path, per_class: int = 500, test_per_class: int = 1) -> np.ndarray:
    """Write ``root/cifar-100-python`` (train, test, meta); returns the train (fine) labels."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    labels = cifar_labels(100, per_class)
    fine_names = [f"class{c:03d}" for c in range(100)]
    for name, lab in (("train", labels), ("test", np.repeat(np.arange(100), test_per_class))):
        _dump(
            folder / name,
            {
                "filenames": [f"{name}_{i:05d}.png" for i in range(len(lab))],
                "batch_label": f"{name} batch",
                "fine_labels": lab.tolist(),
                "coarse_labels": (lab // 5).tolist(),
                "data": encode_index(np.arange(len(lab))),
            },
        )
    _dump(
        folder / "meta",
        {"fine_label_names": fine_names, "coarse_label_names": [f"super{i}" for i in range(20)]},
    )
    return labels


def bypass_cifar_md5(monkeypatch) -> None:
    """Accept the fake files: torchvision checks every md5 (``_check_integrity``) and the meta file's md5."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)


def write_image_folder(
    root: str | Path, counts: dict[str, int], size: int = 12, split: str = "train"
) -> Path:
    """``root/<split>/<class>/<i>.png`` with ``counts[class]`` RGB images; class k (in dict order) is filled with
    the gray value 10 * (k + 1), so a test can tell which folder an image came from."""
    from PIL import Image

    base = Path(root) / split
    for k, (name, n) in enumerate(counts.items()):
        folder = base / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((size, size, 3), 10 * (k + 1), dtype=np.uint8)).save(
                folder / f"{i:04d}.png"
            )
    return base
