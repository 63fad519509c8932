"""CIFAR10LT / CIFAR100LT exactly as the CBDM / LDAM code builds them (docs/design.md section 2), through the real
datamodule on fake CIFAR files in torchvision's pickled format; shot groups by hand."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from diffrop.data.longtail import longtail_counts, select_longtail, shot_groups
from tests.helpers.config_objects import from_group
from tests.helpers.fakedata import decode_index

CIFAR10LT_COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]  # docs/design.md section 2


def reference_longtail_indices(targets: np.ndarray, imb_factor: float) -> np.ndarray:
    """The LDAM / CBDM ``IMBALANCECIFAR`` loop: NumPy's global seed 0, then per class in label order
    shuffle that class's indices and keep the first n_c (written out here, independent of the package)."""
    state = np.random.get_state()
    try:
        np.random.seed(0)
        cls_num = len(np.unique(targets))
        img_max = len(targets) / cls_num
        img_num_per_cls = [int(img_max * imb_factor ** (i / (cls_num - 1.0))) for i in range(cls_num)]
        keep = []
        for the_class, the_img_num in zip(np.unique(targets), img_num_per_cls, strict=True):
            idx = np.where(targets == the_class)[0]
            np.random.shuffle(idx)
            keep.append(idx[:the_img_num])
        return np.concatenate(keep)
    finally:
        np.random.set_state(state)


# --- the counts formula --------------------------------------------------------------------------------


def test_counts_cifar10lt_hand_values():
    assert longtail_counts(5000, 10, 0.01) == CIFAR10LT_COUNTS
    assert sum(CIFAR10LT_COUNTS) == 12406


def test_counts_formula_by_hand():
    # n_c = int(n_max * imb ** (c / (C - 1))), values worked out by hand:
    # 500 * 0.01 ** (1/99) = 500 * 0.95455 = 477.27 -> 477; class 99 keeps 500 * 0.01 = 5.
    c100 = longtail_counts(500, 100, 0.01)
    assert c100[0] == 500 and c100[1] == 477 and c100[-1] == 5 and sum(c100) == 10847
    # 0.05 ** (1/3) = 0.3684 -> 368; 0.05 ** (2/3) = 0.1357 -> 135; 1000 * 0.05 = 50.
    assert longtail_counts(1000, 4, 0.05) == [1000, 368, 135, 50]
    # 0.1 ** 0.5 = 0.3162 -> 31 of 100; 0.1 ** 1 -> 10.
    assert longtail_counts(100, 3, 0.1) == [100, 31, 10]
    assert longtail_counts(7, 1, 0.01) == [7]
    assert longtail_counts(40, 5, 1.0) == [40] * 5  # balanced


@pytest.mark.parametrize("imb", [0.0, -0.1, 1.5, float("nan")])
def test_counts_reject_bad_imbalance(imb):
    with pytest.raises(ValueError, match="imb_factor"):
        longtail_counts(100, 10, imb)


def test_select_matches_reference_loop_on_small_labels():
    labels = np.random.RandomState(3).randint(0, 4, size=400)
    counts = [int(100 * 0.1 ** (c / 3)) for c in range(4)]
    targets_max = np.bincount(labels).max()
    ref_counts = [int(len(labels) / 4 * 0.1 ** (c / 3)) for c in range(4)]
    assert ref_counts == counts and targets_max >= 100  # img_max = len / C = 100, as the reference assumes
    np.testing.assert_array_equal(
        select_longtail(labels, counts, seed=0), reference_longtail_indices(labels, 0.1)
    )


# --- the real datamodule on fake CIFAR trees ------------------------------------------------------------


def test_cifar10lt_through_datamodule(fake_cifar, cifar_md5_bypass):
    dm = from_group("data", "cifar10lt", root=str(fake_cifar.root), imb_factor=0.01)
    train = dm.train_set
    assert len(train.labels) == 12406
    assert dm.class_counts == CIFAR10LT_COUNTS
    assert dm.num_classes == 10 and train.class_names[0] == "airplane" and train.class_names[9] == "truck"
    assert tuple(train.images.shape) == (12406, 3, 32, 32)
    # The same images as the reference code picks, in the same order.
    picked = decode_index(train.images)
    np.testing.assert_array_equal(picked, reference_longtail_indices(fake_cifar.labels10, 0.01))
    np.testing.assert_array_equal(train.labels.numpy(), fake_cifar.labels10[picked])
    assert dm.shot_groups == {"many": [0, 1, 2], "med": [3, 4, 5, 6], "few": [7, 8, 9]}
    np.testing.assert_allclose(dm.class_freq.numpy(), np.array(CIFAR10LT_COUNTS) / 12406, rtol=1e-6)
    # The balanced set (FID reference) is the whole training split.
    assert len(dm.full_train_set().labels) == 50000


def test_cifar100lt_through_datamodule(fake_cifar, cifar_md5_bypass):
    dm = from_group("data", "cifar100lt", root=str(fake_cifar.root), imb_factor=0.01)
    counts = dm.class_counts
    assert sum(counts) == 10847 and len(dm.train_set.labels) == 10847
    assert counts[0] == 500 and counts[-1] == 5
    assert all(a >= b for a, b in itertools.pairwise(counts))
    picked = decode_index(dm.train_set.images)
    np.testing.assert_array_equal(picked, reference_longtail_indices(fake_cifar.labels100, 0.01))
    groups = dm.shot_groups
    assert groups == {"many": list(range(33)), "med": list(range(33, 67)), "few": list(range(67, 100))}
    assert dm.train_set.class_names[:2] == ["class000", "class001"]


def test_balanced_cifar10_keeps_everything(fake_cifar, cifar_md5_bypass):
    dm = from_group("data", "cifar10", root=str(fake_cifar.root), imb_factor=1.0)
    assert dm.class_counts == [5000] * 10
    assert sorted(decode_index(dm.train_set.images).tolist()) == list(range(50000))


def test_missing_cifar_offline_says_where_and_how(tmp_path):
    dm = from_group("data", "cifar10lt", root=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as info:
        dm.train_set  # noqa: B018
    msg = str(info.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in msg
    assert "data.download=true" in msg and "data.root" in msg


def test_missing_cifar100_offline(tmp_path):
    dm = from_group("data", "cifar100lt", root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        dm.train_set  # noqa: B018


# --- shot groups by hand --------------------------------------------------------------------------------


def test_shot_groups_cifar_sizes():
    g10 = shot_groups(CIFAR10LT_COUNTS)
    assert [len(g10[k]) for k in ("many", "med", "few")] == [3, 4, 3]
    g100 = shot_groups(longtail_counts(500, 100, 0.01))
    assert [len(g100[k]) for k in ("many", "med", "few")] == [33, 34, 33]


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        # C = 5: C // 3 = 1 class each for many and few, 3 medium.
        ([50, 40, 30, 20, 10], {"many": [0], "med": [1, 2, 3], "few": [4]}),
        # C = 7: 2 / 3 / 2.
        ([70, 60, 50, 40, 30, 20, 10], {"many": [0, 1], "med": [2, 3, 4], "few": [5, 6]}),
        # Groups follow the counts, not the label order (largest class is label 3 here).
        ([5, 30, 10, 99, 1, 20], {"many": [1, 3], "med": [2, 5], "few": [0, 4]}),
        # Ties broken by label: the lower label counts as larger.
        ([10, 10, 10], {"many": [0], "med": [1], "few": [2]}),
        # C = 2: no many / few class at all, both medium.
        ([10, 1], {"many": [], "med": [0, 1], "few": []}),
    ],
)
def test_shot_groups_rule_by_hand(counts, expected):
    assert shot_groups(counts) == expected
