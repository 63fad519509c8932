"""Samplers: shapes, seeding, per-sample seeds, classifier-free guidance, and exactness on a toy whose optimal
eps is known in closed form; label schedules against hand-computed allocations."""

from __future__ import annotations

import pytest
import torch

from diffrop.diffusion.samplers.loop import StackedGenerator, guided_eps
from diffrop.diffusion.sampling import sample
from diffrop.diffusion.schedule import NoiseSchedule
from diffrop.evaluation.generate import sample_images, sample_labels
from tests.helpers.config_objects import linear_schedule, sampler_spec

SCHEDULE = linear_schedule(50)  # short chains keep the UNet tests fast


class PointMass(torch.nn.Module):
    """The exact eps predictor for data that is one point x*: x_t = sqrt(abar) x* + sqrt(1 - abar) eps, so
    eps = (x_t - sqrt(abar_t) x*) / sqrt(1 - abar_t). Ignores labels, so guidance changes nothing."""

    def __init__(self, x_star: torch.Tensor, schedule: NoiseSchedule) -> None:
        super().__init__()
        self.x_star, self.schedule = x_star, schedule

    def forward(self, x, t, y, cond):
        abar = self.schedule.alpha_bars[t].view(-1, 1, 1, 1)
        return (x - abar.sqrt() * self.x_star) / (1 - abar).sqrt()


def _x_star() -> torch.Tensor:
    return torch.linspace(-0.9, 0.9, 3 * 4 * 4).view(1, 3, 4, 4)


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_shapes_range_and_seed_determinism(unet, name):
    y = torch.tensor([0, 1, 2, 1])
    spec = sampler_spec(name, steps=50 if name == "ddpm" else 5, eta=0.5, guidance=1.0)

    def draw(seed: int) -> torch.Tensor:
        return sample(unet, SCHEDULE, y, (4, 3, 8, 8), spec, torch.Generator().manual_seed(seed))

    a, b, c = draw(0), draw(0), draw(1)
    assert a.shape == (4, 3, 8, 8) and a.dtype == torch.float32
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_stacked_generator_rows_come_from_their_own_seed():
    gen = StackedGenerator([5, 7])
    first = gen.randn((2, 3))
    second = gen.randn((2, 3))
    g5, g7 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(7)
    assert torch.equal(first[0], torch.randn(3, generator=g5))
    assert torch.equal(first[1], torch.randn(3, generator=g7))
    assert torch.equal(second[0], torch.randn(3, generator=g5))  # each stream continues independently
    with pytest.raises(ValueError, match="2 seeds"):
        gen.randn((3, 3))


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_per_sample_seeds_make_images_independent_of_batch_size(unet, eta):
    labels, seeds = torch.arange(8) % 3, torch.arange(100, 108)
    spec4 = sampler_spec("ddim", steps=4, eta=eta, guidance=0.5, batch_size=4)
    spec8 = sampler_spec("ddim", steps=4, eta=eta, guidance=0.5, batch_size=8)
    by4 = sample_images(unet, SCHEDULE, labels, seeds, spec4)
    by8 = sample_images(unet, SCHEDULE, labels, seeds, spec8)
    assert by4.dtype == torch.uint8 and by4.shape == (8, 3, 8, 8)
    assert (by4.int() - by8.int()).abs().max() <= 1  # equal up to float round-off at a uint8 boundary
    assert (by4 == by8).float().mean() > 0.99
    # a sample's image depends on its own seed only: sample 5 alone gives the same picture
    alone = sample_images(unet, SCHEDULE, labels[5:6], seeds[5:6], spec4)
    assert (alone.int() - by8[5:6].int()).abs().max() <= 1


def test_guidance_zero_is_the_conditional_model(unet):
    x, t, y = torch.randn(3, 3, 8, 8), torch.tensor([3, 20, 45]), torch.tensor([0, 1, 2])
    with torch.no_grad():
        conditional = unet(x, t, y, torch.ones(3, dtype=torch.bool))
        unconditional = unet(x, t, y, torch.zeros(3, dtype=torch.bool))
        assert not torch.allclose(conditional, unconditional, atol=1e-3)  # the test can tell them apart
        torch.testing.assert_close(guided_eps(unet, x, t, y, 0.0), conditional)


def test_guided_eps_is_one_batched_forward_equal_to_two_separate_ones(unet):
    x, t, y, w = torch.randn(3, 3, 8, 8), torch.tensor([3, 20, 45]), torch.tensor([0, 1, 2]), 1.5
    sizes = []
    handle = unet.register_forward_hook(lambda m, args, out: sizes.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            guided = guided_eps(unet, x, t, y, w)
            assert sizes == [6]  # one forward over the conditional and unconditional halves
            eps_c = unet(x, t, y, torch.ones(3, dtype=torch.bool))
            eps_u = unet(x, t, y, torch.zeros(3, dtype=torch.bool))
    finally:
        handle.remove()
    torch.testing.assert_close(guided, (1 + w) * eps_c - w * eps_u, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("steps", [1, 7, 1000])
@pytest.mark.parametrize("guidance", [0.0, 2.0])
def test_ddim_eta0_recovers_the_point_mass_exactly(steps, guidance):
    schedule = linear_schedule(1000)
    x_star = _x_star()
    out = sample(
        PointMass(x_star, schedule), schedule, torch.zeros(5, dtype=torch.long), (5, 3, 4, 4),
        sampler_spec("ddim", steps, 0.0, guidance), torch.Generator().manual_seed(0),
    )  # fmt: skip
    torch.testing.assert_close(out, x_star.expand(5, -1, -1, -1), rtol=0, atol=1e-5)


def test_ddpm_ancestral_converges_to_the_point_mass():
    schedule = linear_schedule(1000)
    x_star = _x_star()
    # the last step's mean with the exact eps is x* (mu = (x - sqrt(beta_0) eps) / sqrt(alpha_0) = x*)
    out = sample(
        PointMass(x_star, schedule), schedule, torch.zeros(5, dtype=torch.long), (5, 3, 4, 4),
        sampler_spec("ddpm", 1000, None, 0.0), torch.Generator().manual_seed(0),
    )  # fmt: skip
    torch.testing.assert_close(out, x_star.expand(5, -1, -1, -1), rtol=0, atol=1e-4)


def test_ddpm_spec_refuses_fewer_steps_than_the_schedule():
    with pytest.raises(ValueError, match="sampler=ddim"):
        sample(PointMass(_x_star(), SCHEDULE), SCHEDULE, torch.zeros(1, dtype=torch.long), (1, 3, 4, 4),
               sampler_spec("ddpm", steps=10))  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"name": "euler"}, "sampler.name"), ({"labels": "uniform"}, "sampler.labels"),
     ({"batch_size": 0}, "batch_size"), ({"eta": -1.0}, "eta")],
)  # fmt: skip
def test_sampler_spec_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sampler_spec(**kwargs)


def test_balanced_labels_are_k_mod_c():
    assert sample_labels(7, 3).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert torch.bincount(sample_labels(50000, 10)).tolist() == [5000] * 10


def test_train_labels_largest_remainder_and_interleaved():
    # quotas 3.5, 2.1, 1.4 -> floors 3, 2, 1, the one left over goes to the largest remainder (class 0): 4, 2, 1
    labels = sample_labels(7, 3, "train", torch.tensor([0.5, 0.3, 0.2]))
    assert torch.bincount(labels, minlength=3).tolist() == [4, 2, 1]
    # keys (i + 1/2) / n_c: class 0 at 1/8, 3/8, 5/8, 7/8; class 1 at 1/4, 3/4; class 2 at 1/2
    assert labels.tolist() == [0, 1, 0, 2, 0, 1, 0]
    # ties in the remainder go to the lower class index; frequencies need not be normalised
    assert torch.bincount(sample_labels(4, 3, "train", [1.0, 1.0, 1.0])).tolist() == [2, 1, 1]
    # CIFAR10LT counts: 50k samples follow 5000, 2997, ..., 50 of 12,406 (sums exactly to 50k)
    counts = torch.tensor([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], dtype=torch.float64)
    got = torch.bincount(sample_labels(50000, 10, "train", counts), minlength=10)
    assert got.sum() == 50000 and (got - counts / counts.sum() * 50000).abs().max() < 1


def test_train_labels_need_valid_frequencies():
    with pytest.raises(ValueError, match="frequencies"):
        sample_labels(10, 3, "train")
    with pytest.raises(ValueError, match="class_freq"):
        sample_labels(10, 3, "train", [0.5, 0.5])
    with pytest.raises(ValueError, match=r"sampler\.labels"):
        sample_labels(10, 3, "iid")
