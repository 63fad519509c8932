"""The speed levers that can run on a CPU give the same results as the default path."""

from __future__ import annotations

import warnings

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from diffrop import build
from diffrop.data.device_batches import DeviceBatches, use_device_batches
from diffrop.diffusion.compile import CompiledNet
from diffrop.nets.unet import ClassConditionalUNet
from diffrop.training.module import DiffusionModule
from tests.helpers.train_utils import REPO, TINY_RUN_OVERRIDES


def tiny_net(seed: int = 0) -> ClassConditionalUNet:
    torch.manual_seed(seed)
    return ClassConditionalUNet(
        10,
        image_size=16,
        in_channels=3,
        base_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(8,),
        norm_groups=8,
        dropout=0.0,
    )


def inputs(b: int = 4):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 3, 16, 16, generator=g)
    return (
        x,
        torch.randint(0, 1000, (b,), generator=g),
        torch.randint(0, 10, (b,), generator=g),
        torch.ones(b, dtype=torch.bool),
    )


def test_channels_last_forward_and_grads_match_default():
    x, t, y, c = inputs()
    ref = tiny_net()
    out_ref = ref(x, t, y, c)
    out_ref.square().mean().backward()
    cl = tiny_net().to(memory_format=torch.channels_last)
    out = cl(x.contiguous(memory_format=torch.channels_last), t, y, c)
    out.square().mean().backward()
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)  # same math, other summation order
    conv = cl.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(conv.grad, ref.unet.conv_in.weight.grad, rtol=1e-4, atol=1e-6)


def _module(**kwargs) -> DiffusionModule:
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=TINY_RUN_OVERRIDES)
    net = tiny_net()
    return DiffusionModule(
        net,
        build.build_objective(cfg),
        instantiate(cfg.diffusion),
        torch.ones(10) / 10,
        **build.module_settings(cfg) | kwargs,
    )


def test_compile_falls_back_to_eager_with_a_warning(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("backend exploded")

    x, t, y, c = inputs()
    net = tiny_net()
    monkeypatch.setattr(torch, "compile", lambda net, **kw: broken)
    compiled = CompiledNet(net, torch.device("cpu"))
    with pytest.warns(UserWarning, match="compilation failed .*backend exploded.*running eagerly"):
        out = compiled(x, t, y, c)
    torch.testing.assert_close(out, net(x, t, y, c), rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once; later calls go straight to eager
        compiled(x, t, y, c)


def test_compiled_module_keeps_plain_state_dict_keys():
    module = _module(compile=True)
    module._denoiser = CompiledNet(module.net, torch.device("cpu"))  # what on_fit_start does
    keys = list(module.state_dict())
    assert keys and not any("_orig_mod" in k for k in keys)
    assert {k.split(".")[0] for k in keys} == {"net", "ema", "class_freq"}


def test_channels_last_option_is_validated():
    with pytest.raises(ValueError, match=r"model\.channels_last must be true, false or auto"):
        _module(channels_last="yes")


def _datamodule(**overrides):
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose(
            "train", overrides=[*TINY_RUN_OVERRIDES, *(f"data.{k}={v}" for k, v in overrides.items())]
        )
    return build.build_datamodule(cfg)


@pytest.mark.parametrize("balance", ["none", "sqrt_rs"])
def test_on_device_batches_equal_the_dataloader(balance):
    loader = _datamodule(on_device=False, balance=balance, max_steps=500).train_dataloader()
    device = _datamodule(on_device=True, balance=balance, max_steps=500).train_dataloader()
    assert isinstance(device, DeviceBatches) and not isinstance(loader, DeviceBatches)
    assert len(device) == len(loader) == 500
    n = 0
    for (xa, ya), (xb, yb) in zip(loader, device, strict=True):  # > 2 epochs of 8-image batches on digits_lt
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        n += 1
    assert n == 500


def test_on_device_resumes_at_the_global_step():
    full = _datamodule(on_device=True, max_steps=20).train_dataloader()
    later = _datamodule(on_device=True, max_steps=20).train_dataloader()
    later.batch_sampler.start_step = 12  # what train_dataloader() does with trainer.global_step = 12
    expected = list(full)[12:]
    got = list(later)
    assert len(got) == 8 and all(torch.equal(a[1], b[1]) for a, b in zip(expected, got, strict=True))


def test_on_device_auto():
    small = torch.zeros(10, 3, 32, 32, dtype=torch.uint8)
    assert use_device_batches("auto", small, num_workers=0)
    assert not use_device_batches("auto", small, num_workers=4)
    assert not use_device_batches(
        "auto", torch.zeros(1, dtype=torch.uint8).expand(3 * 1024**3), num_workers=0
    )
    with pytest.raises(ValueError, match=r"data\.on_device"):
        use_device_batches("gpu", small, 0)


@pytest.mark.parametrize(
    ("algorithm", "grad", "expected"),
    [("norm", 3.0, None), ("value", 3.0, 0.5)],  # None: every entry 0.5 / sqrt(#entries), global norm 0.5
)
def test_gradient_clipping_is_done_by_the_module(algorithm, grad, expected):
    """Lightning's bf16/fp16 plugin refuses to clip for fused Adam; the module's hook clips by itself."""
    module = _module()
    params = list(module.net.parameters())
    for p in params:
        p.grad = torch.full_like(p, grad)
    module.configure_gradient_clipping(None, gradient_clip_val=0.5, gradient_clip_algorithm=algorithm)
    n = sum(p.numel() for p in params)
    want = expected if expected is not None else 0.5 / n**0.5
    for p in params:
        torch.testing.assert_close(p.grad, torch.full_like(p, want))


def test_bf16_mixed_with_fused_adam_trains(tmp_path):
    """The GPU config's precision (bf16-mixed) with fused Adam and clipping: the step Lightning used to refuse."""
    from tests.helpers.train_utils import load_ckpt, train_in_process

    train_in_process(
        [*TINY_RUN_OVERRIDES, "trainer.precision=bf16-mixed", "trainer.max_steps=2", "optim.fused_adam=true"],
        tmp_path,
    )
    ckpt = load_ckpt(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2
    opt = ckpt["optimizer_states"][0]
    assert opt["param_groups"][0]["fused"] is True
    assert all(s["exp_avg"].abs().sum() > 0 for s in opt["state"].values())
