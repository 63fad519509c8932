"""DiffAugment with conditioning parameters: zero parameters must mean the identity, so sampling is un-augmented."""

import torch

from diffrop.data.diffaug import NUM_AUG_PARAMS, diff_augment
from diffrop.nets.unet import ClassConditionalUNet


def test_probability_zero_is_identity_with_zero_parameters():
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    out, params = diff_augment(x, p=0.0)
    assert torch.allclose(out, x, atol=1e-6)  # (x - mean) * 1 + mean: identity up to rounding
    assert params.shape == (6, NUM_AUG_PARAMS) and not params.any()


def test_each_sample_parameters_describe_its_transform():
    torch.manual_seed(0)
    x = torch.zeros(64, 3, 16, 16)
    _, params = diff_augment(x, p=1.0)
    brightness, saturation, contrast, dx, dy, cut, cx, cy = params.T
    assert (brightness.abs() <= 0.5).all() and (saturation.abs() <= 1).all() and (contrast.abs() <= 0.5).all()
    # translations are whole pixels: multiples of 1 / (W / 8) = 0.5 in parameter units for W = 16
    assert torch.equal(dx * 2, (dx * 2).round()) and (dx.abs() <= 1).all() and (dy.abs() <= 1).all()
    assert (cut == 1).all() and ((cx >= 0) & (cx <= 1)).all() and ((cy >= 0) & (cy <= 1)).all()


def test_brightness_alone_shifts_a_constant_image_by_twice_the_parameter():
    torch.manual_seed(1)
    x = torch.full((32, 3, 16, 16), 0.1)
    out, params = diff_augment(x, p=0.5)
    untouched = (params[:, 3:] == 0).all(1) & (params[:, 1:3] == 0).all(1)  # only brightness possibly on
    expected = 0.1 + 2 * params[untouched, 0]
    assert untouched.any()
    assert torch.allclose(out[untouched].mean(dim=(1, 2, 3)), expected, atol=1e-6)


def test_network_takes_aug_parameters_and_defaults_to_none():
    net = ClassConditionalUNet(
        10,
        image_size=16,
        in_channels=3,
        base_channels=16,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(),
        dropout=0.0,
        norm_groups=8,
        num_aug_params=NUM_AUG_PARAMS,
    )
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([3, 500]), torch.tensor([1, 2])
    cond = torch.ones(2, dtype=torch.bool)
    with torch.no_grad():
        default = net(x, t, y, cond)
        zero = net(x, t, y, cond, aug=torch.zeros(2, NUM_AUG_PARAMS))
        other = net(x, t, y, cond, aug=torch.ones(2, NUM_AUG_PARAMS))
    assert torch.equal(default, zero)
    assert not torch.allclose(default, other)
