"""Table 3 classifier: metrics on a hand-made case, ResNet-32 size by hand, augmentation, data checks, a tiny run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from diffrop.data.datasets import ImageSet
from diffrop.evaluation.classification import (
    classification_metrics,
    load_generated,
    shot_accuracy,
    split_per_class,
)
from diffrop.nets.resnet import CifarResNet, Uint8Classifier
from diffrop.runtime.run_lock import run_dir_lock
from diffrop.training.classifier import random_crop_flip
from tests.helpers.train_utils import REPO, child_env, load_script, main_in_process
from tests.helpers.wandb_records import offline_runs, read_run


def test_metrics_by_hand():
    # targets 0 0 0 1 1 2, predictions 0 0 1 1 2 2 (class 3 exists but is never seen nor predicted)
    targets = torch.tensor([0, 0, 0, 1, 1, 2])
    preds = torch.tensor([0, 0, 1, 1, 2, 2])
    m = classification_metrics(preds, targets, num_classes=4)
    assert m["accuracy"] == pytest.approx(100 * 4 / 6)
    # precision: class 0 2/2, class 1 1/2, class 2 1/2, class 3 never predicted -> 0; mean over 4 classes
    assert m["macro_precision"] == pytest.approx(100 * (1 + 0.5 + 0.5 + 0) / 4)
    # recall over the classes present in the targets: 2/3, 1/2, 1/1
    assert m["macro_recall"] == pytest.approx(100 * (2 / 3 + 1 / 2 + 1) / 3)


def test_shot_accuracy_by_hand():
    # class 0: 4 samples, 3 right; class 1: 2, both right; class 2: 3, 1 right; class 3: 1, wrong; class 4: 2, both
    # wrong; class 5 and 6: no samples
    targets = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2, 3, 4, 4])
    preds = torch.tensor([0, 0, 0, 1, 1, 1, 2, 0, 0, 2, 0, 1])
    groups = {"many": [0, 1], "med": [2, 3], "few": [4, 5], "empty": [6]}
    acc = shot_accuracy(preds, targets, groups)
    # a mean over samples (5 of 6), not over classes ((3/4 + 1) / 2 = 0.875)
    assert acc["many"] == pytest.approx(5 / 6)
    assert acc["med"] == pytest.approx(1 / 4) and acc["few"] == 0.0
    assert np.isnan(acc["empty"])


def test_metrics_agree_with_scikit_learn():
    from sklearn.metrics import accuracy_score, precision_score, recall_score

    g = torch.Generator().manual_seed(0)
    targets, preds = torch.randint(0, 7, (300,), generator=g), torch.randint(0, 7, (300,), generator=g)
    m = classification_metrics(preds, targets, 7)
    assert m["accuracy"] == pytest.approx(100 * accuracy_score(targets, preds))
    assert m["macro_precision"] == pytest.approx(100 * precision_score(targets, preds, average="macro"))
    assert m["macro_recall"] == pytest.approx(100 * recall_score(targets, preds, average="macro"))


def test_resnet32_has_the_known_size():
    # by hand: stem 3*16*9 + BN 32; stage 1: 5 * (2 * 16*16*9 + 64); stage 2: 16*32*9 + 32*32*9 + 128 +
    # 4 * (2 * 32*32*9 + 128); stage 3: 32*64*9 + 64*64*9 + 256 + 4 * (2 * 64*64*9 + 256); head 64*10 + 10
    expected = 432 + 32 + 5 * 4672 + (4608 + 9216 + 128 + 4 * 18560) + (18432 + 36864 + 256 + 4 * 73984) + 650
    assert expected == 464_154  # the 0.46M of He et al. 2016, Table 6
    net = CifarResNet(10, depth=32)
    assert sum(p.numel() for p in net.parameters()) == expected
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="6n \\+ 2"):
        CifarResNet(10, depth=30)


def test_crop_without_padding_or_flip_is_identity_and_flip_mirrors():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    assert torch.equal(random_crop_flip(x, pad=0, flip=False), x)
    torch.manual_seed(0)
    out = random_crop_flip(x.repeat(16, 1, 1, 1), pad=0, flip=True)
    for img, ref in zip(out, x.repeat(16, 1, 1, 1), strict=True):
        assert torch.equal(img, ref) or torch.equal(img, ref.flip(-1))
    assert any(not torch.equal(a, b) for a, b in zip(out, x.repeat(16, 1, 1, 1), strict=True))
    # padding 2: every crop is a shifted window of the zero-padded image, same shape
    crop = random_crop_flip(x, pad=2, flip=False)
    assert crop.shape == x.shape and set(crop.unique().tolist()) <= set(x.unique().tolist()) | {0.0}


def test_uint8_wrapper_normalises_like_the_cifar_statistics():
    net = CifarResNet(3, depth=8).eval()
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2023, 0.1994, 0.2010])
    expected = net((images.float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    torch.testing.assert_close(Uint8Classifier(net)(images), expected, rtol=1e-4, atol=1e-5)


def test_generated_npz_checks(tmp_path):
    path = tmp_path / "samples.npz"
    np.savez(path, images=np.zeros((4, 8, 8, 3), np.uint8), labels=np.array([0, 1, 2, 3]))
    gen = load_generated(path, num_classes=4, limit=3)
    assert gen.images.shape == (3, 3, 8, 8) and gen.labels.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="labels outside"):
        load_generated(path, num_classes=2)
    with pytest.raises(FileNotFoundError, match=r"src/eval\.py"):
        load_generated(tmp_path / "nope.npz", 4)


def test_held_out_split_is_disjoint_and_per_class():
    labels = torch.tensor([0] * 10 + [1] * 20)
    full = ImageSet(torch.arange(30).view(30, 1, 1, 1).to(torch.uint8), labels, ["a", "b"])
    train, test = split_per_class(full, 0.3)
    assert torch.bincount(test.labels).tolist() == [3, 6] and len(train.labels) == 21
    assert not set(train.images.flatten().tolist()) & set(test.images.flatten().tolist())


@pytest.mark.slow
def test_classify_runs_on_digits_with_generated_images(tmp_path):
    npz = tmp_path / "samples.npz"
    rng = np.random.default_rng(0)
    np.savez(npz, images=rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8), labels=np.arange(20) % 10)
    run = tmp_path / "run"
    cmd = [sys.executable, "src/classify.py", "data=digits_lt", "classifier.depth=8", "trainer.max_epochs=1",
           "trainer.accelerator=cpu", "optim.warmup_epochs=1", f"generated={npz}", f"hydra.run.dir={run}",
           "logger=wandb"]  # fmt: skip
    env = child_env(WANDB_MODE="offline")
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=300, env=env)
    results = json.loads((run / "results.json").read_text())
    assert results["num_samples"] == 20 and 0 <= results["metrics"]["accuracy"] <= 100
    assert set(results["metrics"]) >= {"accuracy", "macro_precision", "macro_recall", "per_shot"}
    (wandb_file,) = offline_runs(run)  # the classifier's W&B run, like a training run's
    record = read_run(wandb_file)
    assert record.job_type == "classify" and set(record.tags) == {"data:digits_lt", "task:classify"}
    assert record.name == "classify-digits_lt-s0" and record.config["generated"] == str(npz)
    exported = torch.jit.load(str(run / "classifier.pt"))
    assert exported(torch.zeros(2, 3, 16, 16, dtype=torch.uint8)).shape == (2, 10)


def test_classify_refuses_a_run_dir_in_use(tmp_path, capsys):
    classify_entry = load_script(REPO / "src" / "classify.py", "classify_entry")
    with run_dir_lock(tmp_path), pytest.raises(SystemExit) as done:  # another process's run
        overrides = [
            "data=digits_lt",
            "classifier.depth=8",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
        ]
        main_in_process("classify", overrides, tmp_path, classify_entry.main)  # without the lock: a quick run
    assert done.value.code == 1 and capsys.readouterr().err.startswith("error: run directory")
    assert {p.name for p in tmp_path.iterdir()} == {".lock"}  # no FAILED, no results: the holder's dir


@pytest.mark.slow
def test_missing_generated_file_is_one_line(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "src/classify.py", "data=digits_lt", f"generated={tmp_path / 'nope.npz'}",
           f"hydra.run.dir={run}"]  # fmt: skip
    env = child_env(PYTHONWARNINGS="ignore")
    env.pop("HYDRA_FULL_ERROR", None)
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()  # after Lightning's "Seed set to 0"
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]], done.stderr
    assert (
        lines[-1]
        == f"error: generated samples {tmp_path / 'nope.npz'} not found; run src/eval.py on a checkpoint first"
    )
    assert (run / "FAILED").read_text().startswith("FileNotFoundError: generated samples")
