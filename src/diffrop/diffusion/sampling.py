"""A sampler setting (the Hydra ``sampler`` group) and drawing images with it.

The samplers themselves (DDPM, DDIM, DPM-Solver++(2M), one module each over one shared loop) are in
``diffrop.diffusion.samplers``; the network wrappers for ``precision`` / ``compile`` in ``sampling_net``. A sampler
is called one way: ``sample`` here for a setting, which is ``loop.run(samplers.get(name), ...)`` with the network
in the setting's precision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from diffrop.diffusion import samplers
from diffrop.diffusion.denoiser import Denoiser
from diffrop.diffusion.samplers.loop import Generator, run
from diffrop.diffusion.sampling_net import PRECISIONS, autocast_net
from diffrop.diffusion.schedule import NoiseSchedule

LABEL_MODES = ("balanced", "train")


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler setting (the Hydra ``sampler`` group): which chain (a name in ``samplers.REGISTRY``), how many
    steps (network evaluations), eta (DDIM only), guidance w, labels, and how to run the network."""

    name: str
    steps: int
    eta: float | None
    guidance: float
    labels: str
    batch_size: int
    precision: str  # fp32 | bf16 (the network under bf16 autocast, the sampler in fp32)
    compile: bool  # torch.compile the network for sampling (``sampling_net``)

    def __post_init__(self) -> None:
        sampler = samplers.get(self.name)  # raises for an unknown name
        if self.labels not in LABEL_MODES:
            raise ValueError(f"sampler.labels={self.labels!r} is not one of {list(LABEL_MODES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"sampler.precision={self.precision!r} is not one of {list(PRECISIONS)}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"sampler.compile must be true or false, got {self.compile!r}")
        if self.batch_size <= 0:
            raise ValueError(f"sampler.batch_size must be > 0, got {self.batch_size}")
        if sampler.check_eta is not None:
            sampler.check_eta(self.eta)

    def timesteps(self, schedule: NoiseSchedule) -> list[int]:
        """The timesteps this setting evaluates the network at on ``schedule`` (raises where the steps do not fit
        it, e.g. DDPM with steps != T): a check to run before a long job draws its first sample."""
        return samplers.get(self.name).grid(schedule, self.steps)

    def describe(self) -> dict:
        """The results.json ``sampler`` entry (``guidance_scale`` is w, the key the table renderer reads).

        ``precision`` appears only when it is not fp32 and ``compile`` only when true, so that shards drawn before
        the options existed keep their manifest (and resume) while bf16 or compiled shards (other rounding) can
        never be mixed with plain fp32 ones.
        """
        out = {
            "name": self.name,
            "steps": self.steps,
            "eta": self.eta,
            "guidance_scale": self.guidance,
            "labels": self.labels,
        }
        if self.precision != "fp32":
            out["precision"] = self.precision
        if self.compile:
            out["compile"] = True
        return out

    def folder_name(self) -> str:
        """The name of this setting's sample folder, written from its whole ``describe()`` (e.g.
        ``ddim100_eta0_w1.5_balanced_bf16``): two settings that a manifest tells apart never share a folder, so a
        second eta (of any sampler that takes one) or precision is drawn beside the first instead of refused."""
        described = self.describe()
        parts = [f"{described.pop('name')}{described.pop('steps')}"]
        parts += [FOLDER_PARTS[key](value) for key, value in described.items() if value is not None]
        return "_".join(parts)


# how each ``describe()`` entry past name and steps appears in a folder name
FOLDER_PARTS: dict[str, Callable[[Any], str]] = {
    "eta": lambda eta: f"eta{eta:g}",
    "guidance_scale": lambda w: f"w{w:g}",
    "labels": str,
    "precision": str,
    "compile": lambda compiled: "compiled",
}


def sample(
    net: Denoiser,
    schedule: NoiseSchedule,
    y: Tensor,
    shape: tuple[int, ...],
    spec: SamplerSpec,
    generator: Generator | None = None,
    progress: Callable | None = None,
) -> Tensor:
    """Run the sampler ``spec`` names, the network in ``spec.precision``; float images in [-1, 1]."""
    net = autocast_net(net, spec.precision, y.device)
    sampler = samplers.get(spec.name)
    return run(sampler, net, schedule, y, shape, spec.steps, spec.eta, spec.guidance, generator, progress)
