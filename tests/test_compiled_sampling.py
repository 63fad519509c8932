"""sampler.compile=true: the network compiled once for generation, with static shapes (the last batch padded to
sampler.batch_size), an eager fallback, and sample folders kept apart from eager ones."""

from __future__ import annotations

import warnings

import pytest
import torch

from diffrop.diffusion.compile import CompiledNet
from diffrop.diffusion.sampling_net import sampling_net
from diffrop.evaluation.generate import sample_images
from diffrop.evaluation.pipeline import sample_dir
from tests.helpers.config_objects import linear_schedule, sampler_spec

SCHEDULE = linear_schedule(1000)


class ShapeRecorder(torch.nn.Module):
    """The net, recording the batch size of every call."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.batches = net, []
        self.in_channels, self.image_size = net.in_channels, net.image_size

    def forward(self, x, t, y, cond):
        self.batches.append(len(x))
        return self.net(x, t, y, cond)


@pytest.mark.parametrize("guidance", [0.0, 1.0])
def test_padding_gives_one_shape_and_the_same_images(unet, guidance):
    """7 samples in batches of 4: unpadded the net sees 4 and 3 (x2 guided); padded, only 4 (x2). The 7 images
    are those of the unpadded run: each row depends on its own seed only (GroupNorm, no batch statistics)."""
    labels, seeds = torch.arange(7) % 3, torch.arange(7) + 100
    runs = {}
    for compile_ in (False, True):
        net = ShapeRecorder(unet.eval())
        spec = sampler_spec("dpmpp2m", 5, None, guidance, batch_size=4, compile=compile_)
        runs[compile_] = (sample_images(net, SCHEDULE, labels, seeds, spec), set(net.batches))
    per_call = 8 if guidance else 4
    assert runs[False][1] == {per_call, per_call * 3 // 4}
    assert runs[True][1] == {per_call}
    images, padded = runs[False][0], runs[True][0]
    assert padded.shape == images.shape == (7, 3, 8, 8)
    assert (images.int() - padded.int()).abs().max() <= 1  # float rounding of a batch of 4 vs 3 at most


def test_compile_is_recorded_and_gets_its_own_folder(tmp_path):
    eager, compiled = sampler_spec("ddim", 10), sampler_spec("ddim", 10, compile=True)
    assert "compile" not in eager.describe()  # manifests of earlier shards stay valid
    assert compiled.describe() == eager.describe() | {"compile": True}
    assert sample_dir(tmp_path, compiled, 10, 0).name.endswith("_compiled_n10_seed0")
    assert sample_dir(tmp_path, eager, 10, 0) != sample_dir(tmp_path, compiled, 10, 0)
    with pytest.raises(ValueError, match=r"sampler\.compile must be true or false"):
        sampler_spec(compile="yes")


def test_sampling_net_is_the_net_itself_unless_asked(unet):
    assert sampling_net(unet, sampler_spec(), torch.device("cpu")) is unet
    compiled = sampling_net(unet, sampler_spec(compile=True), torch.device("cpu"))
    assert isinstance(compiled, CompiledNet)
    assert (compiled.in_channels, compiled.image_size) == (unet.in_channels, unet.image_size)  # the net's


def test_compiled_net_falls_back_to_eager_with_one_warning(unet, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("backend exploded")

    monkeypatch.setattr(torch, "compile", lambda net, **kw: broken)
    net = sampling_net(unet.eval(), sampler_spec(compile=True), torch.device("cpu"))
    labels, seeds = torch.arange(5) % 3, torch.arange(5)
    spec = sampler_spec("ddim", 4, 0.0, batch_size=4, compile=True)
    with pytest.warns(UserWarning, match=r"sampler\.compile=true: compilation failed .*backend exploded"):
        images = sample_images(net, SCHEDULE, labels, seeds, spec)
    assert torch.equal(images, sample_images(unet, SCHEDULE, labels, seeds, spec))


def test_reduce_overhead_outputs_are_copies(unet, monkeypatch):
    """A CUDA-graph replay overwrites its output buffer: CompiledNet hands out a copy in that mode only."""
    buffer = torch.zeros(2, 3, 8, 8)

    def replay(*args, **kwargs):
        buffer.add_(1)
        return buffer

    monkeypatch.setattr(torch, "compile", lambda net, **kw: replay)
    graphs = CompiledNet(unet, torch.device("cpu"), mode="reduce-overhead")
    first = graphs()
    graphs()
    assert first.max() == 1  # unchanged by the second replay
    assert CompiledNet(unet, torch.device("cpu"))() is buffer  # default mode: no copy


@pytest.mark.slow  # compiles the tiny UNet on the CPU (inductor + the C++ compiler): ~30-60 s
def test_real_compile_on_cpu_draws_the_eager_images(unet):
    """torch.compile on this machine (a C++ compiler is part of the setup): no fallback, the same images as eager
    within one uint8 level, guided, with a padded last batch. (It also covers model.compile's wrapper.)"""
    labels, seeds = torch.arange(6) % 3, torch.arange(6)
    spec = sampler_spec("dpmpp2m", 4, None, 1.0, batch_size=4, compile=True)
    net = sampling_net(unet.eval(), spec, torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="sampler.compile")  # a fallback fails the test
        compiled = sample_images(net, SCHEDULE, labels, seeds, spec)
    eager = sample_images(unet, SCHEDULE, labels, seeds, spec)
    assert (compiled.int() - eager.int()).abs().max() <= 1
