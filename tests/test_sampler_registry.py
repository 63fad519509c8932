"""The sampler registry: a sampler defined outside the package (a time grid and an update rule, nothing else)
is registered and drawn through ``SamplerSpec`` / ``sample`` like the built-in ones; every built-in sampler has
its config file and every config file names a registered sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from diffrop.diffusion import samplers
from diffrop.diffusion.samplers.loop import Chain, Sampler
from diffrop.diffusion.sampling import sample
from diffrop.diffusion.schedule import NoiseSchedule
from diffrop.evaluation.generate import generate
from diffrop.evaluation.pipeline import sample_dir
from tests.helpers.config_objects import linear_schedule, sampler_spec
from tests.helpers.train_utils import CONFIG_DIR

SCHEDULE = linear_schedule(50)
X_STAR = torch.linspace(-0.9, 0.9, 2 * 3 * 3).view(1, 2, 3, 3)


class PointMass(torch.nn.Module):
    """The exact eps for data that is the single point X_STAR: eps = (x_t - sqrt(abar_t) x*) / sqrt(1 - abar_t)."""

    def forward(self, x, t, y, cond):
        abar = SCHEDULE.alpha_bars[t].view(-1, 1, 1, 1)
        return (x - abar.sqrt() * X_STAR) / (1 - abar).sqrt()


def one_step_grid(schedule: NoiseSchedule, steps: int) -> list[int]:
    if steps != 1:
        raise ValueError("the one-step sampler takes sampler.steps=1")
    return [schedule.num_steps - 1]


def jump_to_x0(chain: Chain, x, eps, t: int, s: int, state):
    """Straight to the data prediction x0 = (x - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
    abar = chain.schedule.alpha_bars[t]
    return (x - (1 - abar).sqrt() * eps) / abar.sqrt(), state


def no_eta(eta: float | None) -> None:
    if eta is not None:
        raise ValueError("the one-step sampler has no eta")


@pytest.fixture
def one_step():
    toy = Sampler("one_step", one_step_grid, jump_to_x0, no_eta)
    samplers.register(toy)
    yield toy
    del samplers.REGISTRY["one_step"]


def test_a_registered_sampler_is_drawn_through_sampler_spec(one_step):
    assert "one_step" in samplers.names()
    spec = sampler_spec("one_step", steps=1, eta=None, guidance=0.5)
    y = torch.tensor([0, 1, 2])
    x = sample(PointMass(), SCHEDULE, y, (3, 2, 3, 3), spec, torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, X_STAR.expand(3, -1, -1, -1))  # exact eps: one jump lands on x*


def test_the_registered_sampler_validates_its_own_settings(one_step):
    with pytest.raises(ValueError, match="no eta"):
        sampler_spec("one_step", steps=1, eta=0.3)
    spec = sampler_spec("one_step", steps=2, eta=None)
    with pytest.raises(ValueError, match="steps=1"):
        sample(PointMass(), SCHEDULE, torch.zeros(1, dtype=torch.long), (1, 2, 3, 3), spec)


def test_unknown_names_and_name_clashes_are_refused(one_step):
    with pytest.raises(ValueError, match="is not one of"):
        sampler_spec("nope")
    with pytest.raises(ValueError, match="registered already"):
        samplers.register(Sampler("ddim", one_step_grid, jump_to_x0))
    samplers.register(one_step)  # the same object again is a no-op


def test_every_sampler_module_has_a_config_and_every_config_a_sampler():
    configs = {p.stem: OmegaConf.load(p) for p in (CONFIG_DIR / "sampler").glob("*.yaml")}
    assert {c.name for c in configs.values()} == set(configs) == set(samplers.names())
    assert set(samplers.names()) >= {"ddpm", "ddim", "dpmpp2m"}


class NetWithShape(PointMass):
    in_channels, image_size = 2, 3  # what sample_images reads from a network


def jump_with_noise(chain: Chain, x, eps, t: int, s: int, state):
    """``jump_to_x0`` plus eta times fresh noise: a toy sampler whose eta changes the images."""
    x0, state = jump_to_x0(chain, x, eps, t, s, state)
    return x0 + chain.eta * chain.noise(), state


def test_each_eta_of_a_sampler_gets_its_own_sample_folder(tmp_path):
    """The folder is named from the whole setting: a second eta of a sampler other than DDIM is drawn beside
    the first, not refused by the first folder's manifest."""
    samplers.register(Sampler("noisy", one_step_grid, jump_with_noise))
    try:
        specs = [
            sampler_spec("noisy", steps=1, eta=eta, guidance=0.0, labels="balanced") for eta in (0.1, 0.2)
        ]
        folders = [sample_dir(tmp_path, spec, 3, 0) for spec in specs]
        assert [f.name for f in folders] == [
            "noisy1_eta0.1_w0_balanced_n3_seed0",
            "noisy1_eta0.2_w0_balanced_n3_seed0",
        ]
        labels = torch.tensor([0, 1, 2])
        for spec, folder in zip(specs, folders, strict=True):
            generate(NetWithShape(), SCHEDULE, labels, folder, spec, shard_size=3, progress=False)
        first, second = (np.load(folder / "shard_00000.npz")["images"] for folder in folders)
        assert not np.array_equal(first, second)  # two settings, two sets of images
    finally:
        del samplers.REGISTRY["noisy"]


def test_a_folder_name_spells_out_every_setting_that_changes_the_images(tmp_path):
    spec = sampler_spec(
        "ddim", steps=100, eta=0.5, guidance=1.5, labels="train", precision="bf16", compile=True
    )
    assert spec.folder_name() == "ddim100_eta0.5_w1.5_train_bf16_compiled"
    plain = sampler_spec("dpmpp2m", steps=20, eta=None, guidance=0.0, labels="balanced", precision="fp32")
    assert plain.folder_name() == "dpmpp2m20_w0_balanced"  # no eta, fp32 and eager: as before these options
