"""LongTailDataModule on image folders and digits, data_summary.json, re-sampling and the step-indexed batch order."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffrop.data.balance import StepBatchSampler, class_balancing_weights
from diffrop.data.datamodule import LongTailDataModule
from tests.helpers.config_objects import from_group
from tests.helpers.fakedata import write_image_folder

# --- imagefolder_lt --------------------------------------------------------------------------------------


def _folder_dm(root, **kw) -> LongTailDataModule:
    return from_group("data", "imagefolder_lt", root=str(root), **kw)


def test_imagefolder_classes_sorted_and_longtail(tmp_path):
    # Written in non-sorted order; gray value 10 * (k + 1) with k the position in THIS dict.
    written = {"zebra": 7, "apple": 20, "mango": 12}
    write_image_folder(tmp_path, written, size=12)
    dm = _folder_dm(tmp_path, imb_factor=0.1, image_size=8)
    train = dm.train_set
    assert train.class_names == ["apple", "mango", "zebra"]
    # n_max = 20 (largest folder); 20 * 0.1 ** 0.5 = 6.32 -> 6; 20 * 0.1 = 2.
    assert dm.class_counts == [20, 6, 2]
    assert tuple(train.images.shape) == (28, 3, 8, 8) and train.images.dtype == torch.uint8
    gray = {name: 10 * (k + 1) for k, name in enumerate(written)}
    for label, name in enumerate(train.class_names):
        imgs = train.images[train.labels == label]
        assert (imgs == gray[name]).all(), f"class {label} should hold the images of folder {name}"
    assert dm.shot_groups == {"many": [0], "med": [1], "few": [2]}


def test_imagefolder_small_first_class_keeps_what_it_has(tmp_path):
    write_image_folder(tmp_path, {"a": 5, "b": 10}, size=4)
    dm = _folder_dm(tmp_path, imb_factor=0.5, image_size=4)
    assert dm.class_counts == [5, 5]  # n = [10, 5]; class "a" only has 5


def test_imagefolder_empty_class_is_a_clear_error(tmp_path):
    write_image_folder(tmp_path, {"a": 3}, size=4)
    (tmp_path / "train" / "b_empty").mkdir()
    with pytest.raises(FileNotFoundError, match="b_empty") as info:
        _folder_dm(tmp_path, image_size=4).train_set  # noqa: B018
    assert "no .png/.jpg images" in str(info.value)


def test_imagefolder_missing_train_dir_is_a_clear_error(tmp_path):
    write_image_folder(tmp_path, {"a": 3}, size=4, split="val")
    with pytest.raises(FileNotFoundError) as info:
        _folder_dm(tmp_path, image_size=4).train_set  # noqa: B018
    msg = str(info.value)
    assert str(tmp_path / "train") in msg and "data.root" in msg


def test_imagefolder_train_without_class_folders(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        _folder_dm(tmp_path).train_set  # noqa: B018


# --- digits_lt -------------------------------------------------------------------------------------------


def _digits_dm(**kw) -> LongTailDataModule:
    return from_group("data", "digits_lt", **kw)


def _expected_digit_counts(imb: float) -> list[int]:
    from sklearn.datasets import load_digits

    available = np.bincount(load_digits().target)  # 178, 182, 177, 183, ...: n_max = 183
    n_max = available.max()
    return [min(int(available[c]), int(n_max * imb ** (c / 9))) for c in range(10)]


def test_digits_lt_images_and_counts():
    dm = _digits_dm()
    train = dm.train_set
    assert dm.num_classes == 10 and dm.channels == 3
    assert tuple(train.images.shape[1:]) == (3, 16, 16) and train.images.dtype == torch.uint8
    assert torch.equal(train.images[:, 0], train.images[:, 1]) and torch.equal(
        train.images[:, 0], train.images[:, 2]
    )
    assert dm.class_counts == _expected_digit_counts(0.1)
    assert dm.class_counts[0] == 178 and dm.class_counts[9] == 18  # 183 * 0.1 = 18.3


def test_digits_image_size_is_configurable():
    assert tuple(_digits_dm(image_size=8).train_set.images.shape[1:]) == (3, 8, 8)


def test_batches_reach_minus_one_to_one_after_transfer():
    dm = _digits_dm()
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and tuple(images.shape) == (32, 3, 16, 16)
    x, y = dm.on_after_batch_transfer((images, labels), 0)
    assert x.dtype == torch.float32 and torch.equal(y, labels)
    torch.testing.assert_close(x, images.float() / 127.5 - 1.0)  # hflip off: the plain affine map
    assert x.min() >= -1 and x.max() <= 1
    all_x = dm.augment_batch(dm.train_set.images)
    assert all_x.min() == -1.0 and all_x.max() == 1.0  # digits use the full 0..16 -> 0..255 range


def test_hflip_flips_some_samples_and_only_flips():
    dm = _digits_dm(hflip=True)
    images = dm.train_set.images[:64]
    torch.manual_seed(0)
    x = dm.augment_batch(images)
    plain = images.float() / 127.5 - 1.0
    same = (x == plain).flatten(1).all(1)
    flipped = (x == plain.flip(-1)).flatten(1).all(1)
    assert (same | flipped).all()
    assert 10 < int((flipped & ~same).sum()) < 54  # about half of 64


def test_data_summary_json(tmp_path):
    dm = _digits_dm()
    path = dm.write_summary(tmp_path)
    assert path == tmp_path / "data_summary.json"
    summary = json.loads(path.read_text())
    counts = _expected_digit_counts(0.1)
    assert summary["dataset"] == "digits_lt"
    assert summary["imb_factor"] == 0.1
    assert summary["class_counts"] == counts
    assert summary["num_images"] == sum(counts)
    assert summary["class_names"] == [str(d) for d in range(10)]
    assert summary["shot_groups"] == {"many": [0, 1, 2], "med": [3, 4, 5, 6], "few": [7, 8, 9]}


def test_bad_datamodule_arguments_are_clear():
    with pytest.raises(ValueError, match=r"data\.source"):
        from_group("data", "digits_lt", source="mnist")
    with pytest.raises(ValueError, match=r"data\.balance"):
        from_group("data", "digits_lt", source="digits", balance="balanced")
    with pytest.raises(ValueError, match=r"data\.augment"):
        from_group("data", "digits_lt", source="digits", augment="mixup")
    with pytest.raises(ValueError, match=r"data\.batch_size"):
        from_group("data", "digits_lt", source="digits", batch_size=0)


# --- class re-sampling -----------------------------------------------------------------------------------

LT_COUNTS = [400, 100, 25, 4]


def _lt_labels() -> torch.Tensor:
    return torch.cat([torch.full((n,), c) for c, n in enumerate(LT_COUNTS)])


def _class_freq(mode: str, steps: int = 2000, batch: int = 64) -> np.ndarray:
    labels = _lt_labels()
    sampler = StepBatchSampler(
        len(labels), batch, seed=0, weights=class_balancing_weights(labels, mode), num_steps=steps
    )
    drawn = torch.cat([torch.as_tensor(b) for b in sampler])
    return np.bincount(labels[drawn].numpy(), minlength=len(LT_COUNTS)) / len(drawn)


def test_rs_sampler_is_class_uniform():
    # 128,000 draws: the std of each frequency is ~0.0012, so 0.01 is a > 8-sigma tolerance.
    np.testing.assert_allclose(_class_freq("rs"), [0.25] * 4, atol=0.01)


def test_sqrt_rs_sampler_follows_sqrt_counts():
    expected = np.sqrt(LT_COUNTS) / np.sqrt(LT_COUNTS).sum()  # 20, 10, 5, 2 over 37
    np.testing.assert_allclose(_class_freq("sqrt_rs"), expected, atol=0.01)


def test_no_resampling_visits_every_item_once_per_epoch():
    labels = _lt_labels()  # 529 items, batch 23 -> 23 full steps per epoch
    sampler = StepBatchSampler(len(labels), 23, seed=5, num_steps=46)
    batches = list(sampler)
    for epoch in (batches[:23], batches[23:]):
        assert sorted(i for b in epoch for i in b) == list(range(529))
    assert batches[0] != batches[23]  # a fresh permutation each epoch


def test_datamodule_balance_option_reaches_the_loader():
    dm = _digits_dm(balance="rs", batch_size=50, max_steps=400)
    labels = dm.train_set.labels
    drawn = torch.cat([y for _, y in dm.train_dataloader()])
    freq = np.bincount(drawn.numpy(), minlength=10) / len(drawn)
    np.testing.assert_allclose(freq, [0.1] * 10, atol=0.012)  # 20,000 draws, std 0.002
    assert np.bincount(labels.numpy())[9] == 18  # while the data itself stays long-tailed


# --- step-indexed batch order (resume) and DDP ranks --------------------------------------------------------


@pytest.mark.parametrize("mode", ["none", "rs", "sqrt_rs"])
@pytest.mark.parametrize("k", [0, 3, 10, 17])  # 17 > 529 // 32 = 16 steps per epoch: crosses an epoch
def test_batch_k_is_the_same_when_starting_at_k(mode, k):
    labels = _lt_labels()
    weights = class_balancing_weights(labels, mode)
    from_zero = list(StepBatchSampler(len(labels), 32, seed=1, weights=weights, num_steps=k + 3))
    resumed = StepBatchSampler(len(labels), 32, seed=1, weights=weights, num_steps=k + 3)
    resumed.start_step = k
    assert list(resumed) == from_zero[k:]


@pytest.mark.parametrize("mode", ["none", "rs"])
def test_ddp_ranks_split_the_same_global_batch(mode):
    labels = _lt_labels()
    weights = class_balancing_weights(labels, mode)
    single = list(StepBatchSampler(len(labels), 32, seed=2, weights=weights, num_steps=20))
    rank0, rank1 = (
        list(StepBatchSampler(len(labels), 32, seed=2, weights=weights, rank=r, world_size=2, num_steps=20))
        for r in (0, 1)
    )
    for g, a, b in zip(single, rank0, rank1, strict=True):
        assert len(a) == len(b) == 16
        assert a + b == g  # halves of the same global batch, in order
        if mode == "none":
            assert not set(a) & set(b)  # a permutation: disjoint


def test_datamodule_loader_uses_trainer_rank_and_step():
    dm = _digits_dm(batch_size=32, max_steps=12, on_device=False)  # the stand-in trainer has no device
    dm.trainer = SimpleNamespace(global_rank=0, world_size=1, global_step=0)
    full = [y for _, y in dm.train_dataloader()]
    halves = []
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2, global_step=5)  # resumed at step 5
        halves.append([y for _, y in dm.train_dataloader()])
    assert len(halves[0]) == len(halves[1]) == 7
    for step, (a, b) in enumerate(zip(*halves, strict=True), start=5):
        assert torch.equal(torch.cat([a, b]), full[step])


def test_batch_size_errors():
    with pytest.raises(ValueError, match="divisible"):
        StepBatchSampler(100, 30, seed=0, world_size=4)
    with pytest.raises(ValueError, match="exceeds"):
        StepBatchSampler(10, 16, seed=0)


def test_loader_leaves_the_global_rng_alone():
    """A resumed run restores the RNG state before its loader iterator exists: making one must not draw from it
    (a DataLoader without its own generator draws a base seed from the global RNG)."""
    dm = _digits_dm()
    torch.manual_seed(0)
    before = torch.get_rng_state()
    next(iter(dm.train_dataloader()))
    assert torch.equal(torch.get_rng_state(), before)
