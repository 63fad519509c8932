"""The class-conditional DDPM UNet: the CBDM parameter count, the unconditional branch, shapes."""

from __future__ import annotations

import pytest
import torch

from diffrop.nets.unet import ClassConditionalUNet
from tests.helpers.config_objects import from_yaml

TINY = {
    "image_size": 16,
    "in_channels": 3,
    "base_channels": 16,
    "channel_mult": (1, 2),
    "num_res_blocks": 1,
    "attn_resolutions": (8,),
    "dropout": 0.0,
    "norm_groups": 8,
}


def _tiny(num_classes: int = 5, **kw) -> ClassConditionalUNet:
    torch.manual_seed(0)
    net = ClassConditionalUNet(num_classes, **{**TINY, **kw}).eval()
    # Make every label embedding clearly non-zero and distinct (its init may be small).
    with torch.no_grad():
        net.label_embedding.weight.normal_(0, 1)
    return net


def test_default_net_matches_cbdm_parameter_count():
    # The DDPM CIFAR-10 UNet + a 10 x 512 label embedding, as in the CBDM code (docs/design.md section 2).
    net = from_yaml("model/ddpm_unet", "net", num_classes=10, in_channels=3, image_size=32)  # model=ddpm_unet
    assert sum(p.numel() for p in net.parameters()) == 35_751_427
    assert net.num_classes == 10 and net.image_size == 32 and net.in_channels == 3
    # The label embedding lives in the time-embedding width 4 * 128.
    assert tuple(net.label_embedding.weight.shape) == (10, 512)
    # 100 classes add 90 more rows of 512.
    net100 = from_yaml("model/ddpm_unet", "net", num_classes=100, in_channels=3, image_size=32)
    assert sum(p.numel() for p in net100.parameters()) == 35_751_427 + 90 * 512


def _inputs(b: int = 4, size: int = 16, channels: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, channels, size, size, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    return x, t


@torch.no_grad()
def test_tiny_forward_shapes():
    net = _tiny()
    x, t = _inputs()
    out = net(x, t, torch.tensor([0, 1, 2, 4]), torch.ones(4, dtype=torch.bool))
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    gray = _tiny(in_channels=1, image_size=8)
    x1, t1 = _inputs(b=2, size=8, channels=1)
    assert gray(x1, t1, torch.tensor([0, 3]), torch.ones(2, dtype=torch.bool)).shape == (2, 1, 8, 8)


@torch.no_grad()
def test_unconditional_output_does_not_depend_on_the_label():
    net = _tiny()
    x, t = _inputs()
    off = torch.zeros(4, dtype=torch.bool)
    a = net(x, t, torch.tensor([0, 1, 2, 3]), off)
    b = net(x, t, torch.tensor([4, 4, 0, 1]), off)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # ...while conditional outputs do depend on it.
    on = torch.ones(4, dtype=torch.bool)
    assert not torch.allclose(
        net(x, t, torch.tensor([0, 1, 2, 3]), on), net(x, t, torch.tensor([4, 4, 0, 1]), on)
    )


@torch.no_grad()
def test_unconditional_equals_a_zero_label_embedding():
    net = _tiny()
    x, t = _inputs()
    out = net(x, t, torch.tensor([1, 2, 3, 4]), torch.zeros(4, dtype=torch.bool))
    # Zero the embedding table: every label then means "no label".
    net.label_embedding.weight.zero_()
    zero_emb = net(x, t, torch.tensor([1, 2, 3, 4]), torch.ones(4, dtype=torch.bool))
    torch.testing.assert_close(out, zero_emb, rtol=0, atol=1e-6)


@torch.no_grad()
def test_cond_mask_is_per_sample():
    net = _tiny()
    x, t = _inputs()
    y = torch.tensor([0, 1, 2, 3])
    mixed = net(x, t, y, torch.tensor([True, False, True, False]))
    all_on = net(x, t, y, torch.ones(4, dtype=torch.bool))
    all_off = net(x, t, y, torch.zeros(4, dtype=torch.bool))
    torch.testing.assert_close(mixed[[0, 2]], all_on[[0, 2]], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[[1, 3]], all_off[[1, 3]], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_aug_conditioning_zero_means_no_augmentation():
    net = _tiny(num_aug_params=6)
    with torch.no_grad():
        net.aug_embedding.weight.normal_()
    x, t = _inputs()
    y, on = torch.tensor([0, 1, 2, 3]), torch.ones(4, dtype=torch.bool)
    torch.testing.assert_close(net(x, t, y, on), net(x, t, y, on, aug=torch.zeros(4, 6)))
    assert not torch.allclose(net(x, t, y, on), net(x, t, y, on, aug=torch.ones(4, 6)))


def test_image_size_must_divide_by_the_downsampling():
    with pytest.raises(ValueError, match="image_size"):
        ClassConditionalUNet(10, **{**TINY, "image_size": 15})


def test_gradients_reach_the_label_embedding():
    net = _tiny().train()
    x, t = _inputs()
    net(x, t, torch.tensor([0, 1, 0, 1]), torch.ones(4, dtype=torch.bool)).square().mean().backward()
    grad = net.label_embedding.weight.grad
    assert grad[:2].abs().sum() > 0 and grad[2:].abs().sum() == 0  # only the labels used get gradient
