"""Samplers as pure functions over ``net(x, t, y, cond)``: ancestral DDPM, DDIM and DPM-Solver++(2M), with
classifier-free guidance.

Guidance (CBDM / DiffROP convention): eps = (1 + w) eps(x, c) - w eps(x, none), the conditional and unconditional
halves evaluated in ONE batched forward of size 2B.

Randomness: every sampler draws its noise through ``generator``, either a ``torch.Generator`` (one stream for the
batch) or a ``StackedGenerator`` (one stream per sample, EDM's habit): with per-sample seeds, sample k's initial
noise and every later noise draw depend on seed k only, so a generated set does not depend on the batch size,
the shard layout or the number of GPUs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from diffrop.diffusion.denoiser import Denoiser
from diffrop.diffusion.schedule import NoiseSchedule
from diffrop.runtime.compile import CompiledNet

SAMPLERS = ("ddpm", "ddim", "dpmpp2m")
LABEL_MODES = ("balanced", "train")
PRECISIONS = ("fp32", "bf16")


class StackedGenerator:
    """One ``torch.Generator`` per sample (EDM's ``StackedRandomGenerator``): row i of every draw comes from seed i.

    Costs one small ``randn`` per sample and draw; next to a network forward per step this is negligible.
    """

    def __init__(self, seeds: Sequence[int] | Tensor, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(int(s)) for s in seeds]

    def randn(self, shape: Sequence[int]) -> Tensor:
        if shape[0] != len(self.generators):
            raise ValueError(
                f"asked for {shape[0]} samples of noise but this generator has {len(self.generators)} seeds"
            )
        return torch.stack(
            [torch.randn(tuple(shape[1:]), generator=g, device=self.device) for g in self.generators]
        )


Generator = torch.Generator | StackedGenerator


def _randn(shape: tuple[int, ...], generator: Generator | None, device: torch.device) -> Tensor:
    if isinstance(generator, StackedGenerator):
        return generator.randn(shape).to(device)
    return torch.randn(shape, generator=generator, device=device)


def guided_eps(net: Denoiser, x: Tensor, t: Tensor, y: Tensor, guidance: float) -> Tensor:
    cond = torch.ones_like(y, dtype=torch.bool)
    if guidance == 0:
        return net(x, t, y, cond)
    both = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, y]), torch.cat([cond, ~cond]))
    eps_c, eps_u = both.chunk(2)
    return (1 + guidance) * eps_c - guidance * eps_u


@torch.no_grad()
def ddpm_sample(
    net: Denoiser,
    schedule: NoiseSchedule,
    y: Tensor,
    shape: tuple[int, ...],
    guidance: float = 0.0,
    generator: Generator | None = None,
    progress: Callable | None = None,
) -> Tensor:
    """Ancestral sampling over all T steps with variance beta_t ("fixedlarge", as CBDM)."""
    x = _randn(shape, generator, y.device)
    steps = range(schedule.num_steps - 1, -1, -1)
    for i in progress(steps) if progress else steps:
        t = torch.full((shape[0],), i, device=y.device, dtype=torch.long)
        mean = schedule.posterior_mean(x, t, guided_eps(net, x, t, y, guidance))
        if i > 0:
            noise = _randn(shape, generator, y.device)
            x = mean + schedule.betas[i].sqrt() * noise
        else:
            x = mean
    return x.clamp(-1, 1)


def timestep_grid(schedule: NoiseSchedule, steps: int) -> list[int]:
    """``steps`` evenly spaced integer timesteps from T - 1 down to 0 (DDIM's grid)."""
    if not 1 <= steps <= schedule.num_steps:
        raise ValueError(f"sampler.steps must be in [1, {schedule.num_steps}], got {steps}")
    return torch.linspace(0, schedule.num_steps - 1, steps).round().long().tolist()[::-1]


@torch.no_grad()
def ddim_sample(
    net: Denoiser,
    schedule: NoiseSchedule,
    y: Tensor,
    shape: tuple[int, ...],
    steps: int = 100,
    eta: float = 0.0,
    guidance: float = 0.0,
    generator: Generator | None = None,
    progress: Callable | None = None,
) -> Tensor:
    """DDIM (Song et al. 2021, Eq. 12) on ``steps`` evenly spaced timesteps; eta = 1 recovers DDPM-like noise."""
    ts = timestep_grid(schedule, steps)
    x = _randn(shape, generator, y.device)
    pairs = list(zip(ts, [*ts[1:], -1], strict=True))
    for i, j in progress(pairs) if progress else pairs:
        t = torch.full((shape[0],), i, device=y.device, dtype=torch.long)
        eps = guided_eps(net, x, t, y, guidance)
        abar_t = schedule.alpha_bars[i]
        abar_s = schedule.alpha_bars[j] if j >= 0 else torch.ones_like(abar_t)
        x0 = ((x - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()).clamp(-1, 1)
        eps = (x - abar_t.sqrt() * x0) / (1 - abar_t).sqrt()  # consistent with the clipped x0
        sigma = eta * ((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)).sqrt()
        x = abar_s.sqrt() * x0 + (1 - abar_s - sigma**2).clamp_min(0).sqrt() * eps
        if eta > 0 and j >= 0:
            x = x + sigma * _randn(shape, generator, y.device)
    return x.clamp(-1, 1)


def half_log_snr(schedule: NoiseSchedule) -> Tensor:
    """lambda_t = log(alpha_t / sigma_t) = log(abar_t / (1 - abar_t)) / 2 for every timestep [T], float64."""
    abar = schedule.alpha_bars.double().cpu()
    return 0.5 * (abar.log() - (1 - abar).log())


def logsnr_grid(schedule: NoiseSchedule, steps: int) -> list[int]:
    """``steps`` integer timesteps from T - 1 down to 0 (just T - 1 for one step), evenly spaced in lambda
    (Lu et al. 2022a's "logSNR" step schedule, which their code recommends for low-resolution images): equal
    h_i keep the multistep ratio r_i near 1, where DDIM's even-in-t grid ends with one step across the whole
    low-noise range (on the tests' Gaussian data, DPM-Solver++ on that grid misses the variance by 40-60% at
    20-40 steps; on this one by 0.3-3%).

    Each target lambda is mapped to the nearest timestep, then nudged so that the grid stays strictly
    decreasing and ends at 0 (at steps = T it is every timestep).
    """
    timestep_grid(schedule, steps)  # validates steps
    lam = half_log_snr(schedule)  # increasing as t decreases
    targets = torch.linspace(float(lam[-1]), float(lam[0]), steps, dtype=torch.float64)
    nearest = (lam[None, :] - targets[:, None]).abs().argmin(1).tolist()
    grid: list[int] = []
    for k, t in enumerate(nearest):
        upper = schedule.num_steps - 1 if k == 0 else grid[-1] - 1
        grid.append(min(max(t, steps - 1 - k), upper))
    return grid


def _alpha_sigma_lambda(schedule: NoiseSchedule, t: int) -> tuple[float, float, float]:
    """VP coefficients of timestep t in float64: alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t) and the
    half log-SNR lambda_t = log(alpha_t / sigma_t) (Lu et al. 2022a's time variable)."""
    abar = float(schedule.alpha_bars[t].double())
    alpha, sigma = math.sqrt(abar), math.sqrt(1.0 - abar)
    return alpha, sigma, math.log(alpha / sigma)


def dpmpp_x0_estimate(x0: Tensor, x0_prev: Tensor | None, r: float) -> Tensor:
    """The data prediction that the DPM-Solver++(2M) step integrates (Lu et al. 2022b, Algorithm 2):
    D = (1 + 1 / (2r)) x0_i - 1 / (2r) x0_{i-1}, with r = h_{i-1} / h_i; the first step has no history and
    takes D = x0_i (first order, which is DDIM)."""
    if x0_prev is None:
        return x0
    return (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev


@torch.no_grad()
def dpmpp2m_sample(
    net: Denoiser,
    schedule: NoiseSchedule,
    y: Tensor,
    shape: tuple[int, ...],
    steps: int = 20,
    guidance: float = 0.0,
    generator: Generator | None = None,
    progress: Callable | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
    Probabilistic Models", Algorithm 2): the multistep second-order solver of the probability-flow ODE in its
    data-prediction form, one (guided) network evaluation per step.

    On the grid t_0 = T - 1 > ... > t_{M-1} = 0 of ``logsnr_grid`` (``steps`` = M evaluations), with h_i = lambda_{t_i} -
    lambda_{t_{i-1}}: x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} - alpha_{t_i} (e^{-h_i} - 1) D_i,
    D_i from ``dpmpp_x0_estimate``. The last evaluation, at t = 0, ends with the first-order step to
    sigma = 0 (lambda = inf), i.e. x = x0(x_{t=0}), as ddim_sample's last step and diffusers'
    ``final_sigmas_type="zero"``. The data prediction x0 = (x - sigma eps) / alpha is clipped to [-1, 1] as in
    ddim_sample (the thresholding that DPM-Solver++ allows for pixel-space guided sampling). Deterministic after
    the initial noise, so per-sample seeds carry over.
    """
    ts = logsnr_grid(schedule, steps)
    x = _randn(shape, generator, y.device)
    x0_prev, h_prev = None, 0.0
    pairs = list(zip(ts, [*ts[1:], -1], strict=True))
    for i, j in progress(pairs) if progress else pairs:
        t = torch.full((shape[0],), i, device=y.device, dtype=torch.long)
        eps = guided_eps(net, x, t, y, guidance)
        alpha_i, sigma_i, lambda_i = _alpha_sigma_lambda(schedule, i)
        x0 = ((x - sigma_i * eps) / alpha_i).clamp(-1, 1)
        if j < 0:  # the final step to sigma = 0 (e^{-h} = 0, alpha = 1) leaves x = x0
            break
        alpha_j, sigma_j, lambda_j = _alpha_sigma_lambda(schedule, j)
        h = lambda_j - lambda_i
        d = dpmpp_x0_estimate(x0, x0_prev, h_prev / h)
        x = (sigma_j / sigma_i) * x - (alpha_j * math.expm1(-h)) * d
        x0_prev, h_prev = x0, h
    return x0


def autocast_net(net: Denoiser, precision: str, device: torch.device) -> Denoiser:
    """``net`` itself for fp32; for bf16, ``net`` under ``torch.autocast(bfloat16)`` on ``device`` with its
    output cast back to float32, so that only the network runs in bf16 and the sampler's state and update
    arithmetic stay fp32. bf16 needs a CUDA device that supports it, or the CPU (slow there: for tests)."""
    if precision not in PRECISIONS:
        raise ValueError(f"sampler.precision={precision!r} is not one of {list(PRECISIONS)}")
    if precision == "fp32":
        return net
    if device.type not in ("cuda", "cpu") or (device.type == "cuda" and not torch.cuda.is_bf16_supported()):
        raise ValueError(
            f"sampler.precision=bf16 needs a bf16-capable CUDA device (or the CPU), got {device}"
        )

    def bf16_net(x: Tensor, t: Tensor, y: Tensor, cond: Tensor) -> Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return net(x, t, y, cond).float()

    return bf16_net


def sampling_net(net: Denoiser, spec: SamplerSpec, device: torch.device) -> Denoiser:
    """The network that draws the samples: ``net`` itself, or for ``sampler.compile=true`` compiled once for
    every batch to come, with static shapes (``sample_images`` pads the last batch to ``sampler.batch_size``) and,
    on CUDA, CUDA graphs (``mode="reduce-overhead"``: one graph replay per step instead of ~200 kernel launches).
    Falls back to eager with a warning where compilation fails."""
    if not spec.compile:
        return net
    mode = "reduce-overhead" if device.type == "cuda" else None
    return CompiledNet(net, device, setting="sampler.compile", mode=mode, dynamic=False)


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] float -> [0, 255] uint8."""
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler setting (the Hydra ``sampler`` group): which chain (``SAMPLERS``), how many steps (network
    evaluations), eta (DDIM only), guidance w, labels."""

    name: str = "ddim"
    steps: int = 100
    eta: float | None = 0.0
    guidance: float = 0.0
    labels: str = "balanced"
    batch_size: int = 256
    precision: str = "fp32"  # fp32 | bf16 (the network under bf16 autocast, the sampler in fp32)
    compile: bool = False  # torch.compile the network for sampling (``sampling_net``)

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            raise ValueError(f"sampler.name={self.name!r} is not one of {list(SAMPLERS)}")
        if self.labels not in LABEL_MODES:
            raise ValueError(f"sampler.labels={self.labels!r} is not one of {list(LABEL_MODES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"sampler.precision={self.precision!r} is not one of {list(PRECISIONS)}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"sampler.compile must be true or false, got {self.compile!r}")
        if self.batch_size <= 0:
            raise ValueError(f"sampler.batch_size must be > 0, got {self.batch_size}")
        if self.name == "ddim" and (self.eta is None or self.eta < 0):
            raise ValueError(f"sampler.eta must be >= 0 for DDIM, got {self.eta}")
        if self.name == "dpmpp2m" and self.eta not in (None, 0):
            raise ValueError(
                f"sampler.eta must be null for dpmpp2m (a deterministic ODE solver), got {self.eta}"
            )

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
    if spec.name == "ddpm":
        if spec.steps != schedule.num_steps:
            raise ValueError(
                f"sampler=ddpm walks all T={schedule.num_steps} steps (got sampler.steps={spec.steps}); "
                "use sampler=ddim for fewer steps"
            )
        return ddpm_sample(net, schedule, y, shape, spec.guidance, generator, progress)
    if spec.name == "dpmpp2m":
        return dpmpp2m_sample(net, schedule, y, shape, spec.steps, spec.guidance, generator, progress)
    return ddim_sample(
        net, schedule, y, shape, spec.steps, float(spec.eta), spec.guidance, generator, progress
    )


def sample_labels(
    num_samples: int,
    num_classes: int,
    mode: str = "balanced",
    class_freq: Sequence[float] | Tensor | None = None,
) -> Tensor:
    """Labels of a generated set [N] (long).

    ``balanced``: sample k gets class k % C (exactly balanced when C divides N; docs/design.md section 3).
    ``train``: class counts follow the training label frequencies by largest-remainder allocation of N
    (deterministic; ties go to the lower class index), interleaved so that any prefix is close to the same mix:
    the i-th sample of class c sits at position key (i + 1/2) / n_c, classes ordered by key then index.
    """
    if num_samples <= 0 or num_classes <= 0:
        raise ValueError(f"need num_samples > 0 and num_classes > 0, got {num_samples}, {num_classes}")
    if mode == "balanced":
        return torch.arange(num_samples) % num_classes
    if mode != "train":
        raise ValueError(f"sampler.labels={mode!r} is not one of {list(LABEL_MODES)}")
    if class_freq is None:
        raise ValueError("sampler.labels=train needs the training class frequencies")
    freq = np.asarray(torch.as_tensor(class_freq, dtype=torch.float64), dtype=np.float64)
    if freq.shape != (num_classes,) or (freq < 0).any() or freq.sum() <= 0:
        raise ValueError(
            f"class_freq must be {num_classes} non-negative numbers with a positive sum, got {freq}"
        )
    quota = freq / freq.sum() * num_samples
    counts = np.floor(quota).astype(np.int64)
    remainder_order = sorted(range(num_classes), key=lambda c: (-(quota[c] - counts[c]), c))
    counts[remainder_order[: num_samples - counts.sum()]] += 1
    labels = np.repeat(np.arange(num_classes), counts)
    keys = np.concatenate([(np.arange(n) + 0.5) / n for n in counts if n > 0])
    return torch.as_tensor(labels[np.lexsort((labels, keys))], dtype=torch.long)
