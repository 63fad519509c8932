"""DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2) against independent answers: the exact probability-flow ODE
solution for Gaussian data (closed-form optimal eps), DDIM (its first-order special case) and diffusers'
DPMSolverMultistepScheduler run on the same schedule, timesteps and network."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from diffrop.diffusion import samplers
from diffrop.diffusion.samplers.dpmpp2m import dpmpp_x0_estimate, half_log_snr, logsnr_grid
from diffrop.diffusion.samplers.loop import guided_eps, run
from diffrop.diffusion.sampling import SamplerSpec, sample
from diffrop.diffusion.schedule import NoiseSchedule
from diffrop.evaluation.generate import sample_images
from diffrop.evaluation.pipeline import sample_dir
from tests.helpers.config_objects import linear_schedule, sampler_spec

SCHEDULE = linear_schedule(1000)
M, S = 0.05, 0.2  # data x0 ~ N(M, S^2 I): M + 4.5 S < 1, so clipping x0 to [-1, 1] never acts


class GaussianOptimalEps(torch.nn.Module):
    """The exact eps predictor for x0 ~ N(m, s^2 I): with x_t = sqrt(abar) x0 + sqrt(1 - abar) eps,
    E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) m) / (abar s^2 + 1 - abar). Ignores the labels."""

    def __init__(self, schedule: NoiseSchedule, m: float = M, s: float = S) -> None:
        super().__init__()
        self.schedule, self.m, self.s = schedule, m, s

    def forward(self, x, t, y, cond):
        abar = self.schedule.alpha_bars[t].double().view(-1, *([1] * (x.dim() - 1)))
        eps = (1 - abar).sqrt() * (x.double() - abar.sqrt() * self.m) / (abar * self.s**2 + 1 - abar)
        return eps.to(x.dtype)


def exact_flow(x_T: torch.Tensor, schedule: NoiseSchedule, m: float = M, s: float = S) -> torch.Tensor:
    """Where the probability-flow ODE takes x_T for Gaussian data, then the last step both samplers take.

    Along the ODE, z = (x_t - alpha_t m) / sqrt(alpha_t^2 s^2 + sigma_t^2) is constant (the marginal is
    N(alpha_t m, alpha_t^2 s^2 + sigma_t^2) and the flow is the monotone map between them). The samplers stop at
    t = 0 (sigma_0 = 0.01) and return x0(x_{t=0}) = m + alpha_0 s^2 z / sqrt(alpha_0^2 s^2 + sigma_0^2).
    """
    abar = schedule.alpha_bars.double()
    a_T, v_T = abar[-1].sqrt(), abar[-1] * s**2 + 1 - abar[-1]
    a_0, v_0 = abar[0].sqrt(), abar[0] * s**2 + 1 - abar[0]
    z = (x_T.double() - a_T * m) / v_T.sqrt()
    return m + a_0 * s**2 * z / v_0.sqrt()


def _noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn((n, 1, 4, 4), generator=torch.Generator().manual_seed(seed))


def _run(name: str, n: int, steps: int, seed: int = 0) -> torch.Tensor:
    """Sampler ``name`` (DDIM at eta = 0) with ``steps`` on the Gaussian data's exact eps, no guidance."""
    y = torch.zeros(n, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)  # the same first draw as _noise(n, seed)
    return sample(
        GaussianOptimalEps(SCHEDULE), SCHEDULE, y, (n, 1, 4, 4), sampler_spec(name, steps, guidance=0.0), gen
    )


@pytest.mark.parametrize("steps", [10, 20])
def test_gaussian_data_mean_and_variance_at_few_steps(steps):
    """The sampled set's mean and variance match the data's within 4 standard errors of n = 2048 values.

    The values are independent (per-pixel net, iid noise), so the mean's standard error is s / sqrt(n) and
    the sample variance's relative one sqrt(2 / (n - 1)) (3.1%: a 4-SE band of 12.5%). The known biases are
    well inside it: the last step from t = 0 shrinks the variance by sigma_0^2 / (alpha_0^2 s^2) = 0.25%, and
    the solver's own error at 10 / 20 steps is 2-4% in variance (pinned tighter by the pathwise test below).
    DDIM on its even-in-t grid at the same step counts misses by 50-76%, so the band can fail.
    """
    n = 128 * 16
    mean_tol, var_tol = 4 * S / math.sqrt(n), 4 * math.sqrt(2 / (n - 1)) * S**2
    out = _run("dpmpp2m", 128, steps).double()
    assert abs(out.mean().item() - M) < mean_tol
    assert abs(out.var().item() - S**2) < var_tol
    ddim = _run("ddim", 128, steps).double()
    assert abs(ddim.var().item() - S**2) > 3 * var_tol


def test_pathwise_second_order_convergence_to_the_exact_flow():
    """Each sample lands where the exact ODE takes its own noise; the error shrinks ~4x per halving of h
    (second order; DDIM: ~2x, first order), so DPM-Solver++ and DDIM approach the same deterministic answer."""
    x_T = _noise(64)
    exact = exact_flow(x_T, SCHEDULE)

    def rms(out: torch.Tensor) -> float:
        return (out.double() - exact).pow(2).mean().sqrt().item()

    dpm = {n: rms(_run("dpmpp2m", 64, n)) for n in (10, 20, 40, 80)}
    ddim = {n: rms(_run("ddim", 64, n)) for n in (100, 200, 1000)}
    assert dpm[10] < 0.03 * S  # 10 evaluations: about 2% of the data's scale
    assert dpm[40] / dpm[80] > 3.0  # second order: 4x
    assert 1.6 < ddim[100] / ddim[200] < 2.4  # first order: 2x
    assert dpm[20] < ddim[100] / 3  # 20 DPM-Solver++ steps beat 100 DDIM steps
    assert ddim[1000] < 0.01 * S and dpm[80] < 0.002 * S  # both converge to the exact flow ...
    agreement = (_run("dpmpp2m", 64, 80) - _run("ddim", 64, 1000)).abs().max().item()
    assert agreement < 0.03 * S  # ... hence to each other


@pytest.mark.parametrize("guidance", [0.0, 2.0])
def test_two_steps_are_ddim(guidance):
    """With no history the update is first order, which is DDIM (as Lu et al. 2022b note): on the shared grid
    [T - 1, 0] both take the same step and end with x0 at t = 0."""
    net = GaussianOptimalEps(SCHEDULE, m=0.7, s=0.6)  # x0 predictions beyond 1: the clipping is shared too
    y = torch.zeros(16, dtype=torch.long)

    def two_steps(name: str, eta: float | None) -> torch.Tensor:
        spec = sampler_spec(name, 2, eta, guidance)
        return sample(net, SCHEDULE, y, (16, 1, 4, 4), spec, torch.Generator().manual_seed(3))

    assert logsnr_grid(SCHEDULE, 2) == [999, 0]
    # float32 round-off: x0 at t = T - 1 divides x - sigma eps by alpha = 0.0064 (~150x amplification)
    torch.testing.assert_close(two_steps("dpmpp2m", None), two_steps("ddim", 0.0), rtol=0, atol=1e-4)


def test_second_order_estimate_is_the_midpoint_extrapolation():
    x0, prev = torch.tensor([1.0]), torch.tensor([3.0])
    assert dpmpp_x0_estimate(x0, None, 0.5) is x0
    # r = 1 (equal steps): D = 1.5 x0 - 0.5 prev = 0; r = 0.5: D = 2 x0 - prev = -1
    assert dpmpp_x0_estimate(x0, prev, 1.0).item() == pytest.approx(0.0)
    assert dpmpp_x0_estimate(x0, prev, 0.5).item() == pytest.approx(-1.0)


@pytest.mark.parametrize("steps", [1, 2, 5, 10, 20, 999, 1000])
def test_logsnr_grid_is_strictly_decreasing_from_t_max_to_zero(steps):
    grid = logsnr_grid(SCHEDULE, steps)
    assert len(grid) == steps and grid[0] == 999 and grid[-1] == (0 if steps > 1 else 999)
    assert grid == sorted(set(grid), reverse=True)  # strictly decreasing
    if 5 <= steps <= 20:  # the steps in lambda are even (up to the integer rounding near t = 0)
        lam = half_log_snr(SCHEDULE)[grid]
        h = lam.diff()
        assert (h.max() - h.min()) / h.mean() < 0.5
    with pytest.raises(ValueError, match="steps"):
        logsnr_grid(SCHEDULE, 1001)


@pytest.mark.parametrize(("steps", "guidance"), [(6, 0.0), (10, 1.5)])
def test_matches_diffusers_dpm_solver_multistep(unet, steps, guidance):
    """diffusers' DPMSolverMultistepScheduler (dpmsolver++, order 2, midpoint, sigma -> 0 at the end) on our
    betas and our timesteps, driven by the same guided eps; its thresholding with sample_max_value = 1 is the
    clipping of x0 to [-1, 1], which a random UNet's x0 predictions trigger."""
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, trained_betas=SCHEDULE.betas.double().numpy(),
        algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", final_sigmas_type="zero",
        lower_order_final=True, thresholding=True, sample_max_value=1.0,
    )  # fmt: skip
    grid = logsnr_grid(SCHEDULE, steps)
    scheduler.set_timesteps(timesteps=grid)
    y = torch.tensor([0, 1, 2, 1])
    x = torch.randn((4, 3, 8, 8), generator=torch.Generator().manual_seed(5))
    clipped = False
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = guided_eps(unet, x, torch.full((4,), int(t)), y, guidance)
            abar = SCHEDULE.alpha_bars[int(t)]
            clipped |= bool((((x - (1 - abar).sqrt() * eps) / abar.sqrt()).abs() > 1).any())
            x = scheduler.step(eps, t, x).prev_sample
    spec = sampler_spec("dpmpp2m", steps, None, guidance)
    ours = sample(unet, SCHEDULE, y, (4, 3, 8, 8), spec, torch.Generator().manual_seed(5))
    assert clipped
    torch.testing.assert_close(ours, x.clamp(-1, 1), rtol=0, atol=2e-4)


def test_spec_dispatch_and_per_sample_seeds(unet):
    labels, seeds = torch.arange(6) % 3, torch.arange(40, 46)
    spec = sampler_spec("dpmpp2m", steps=4, eta=None, guidance=0.5, batch_size=4)
    by4 = sample_images(unet, linear_schedule(50), labels, seeds, spec)
    by6 = sample_images(
        unet, linear_schedule(50), labels, seeds, sampler_spec("dpmpp2m", 4, None, 0.5, batch_size=6)
    )
    assert (by4.int() - by6.int()).abs().max() <= 1 and (by4 == by6).float().mean() > 0.99
    direct = run(samplers.get("dpmpp2m"), unet, linear_schedule(50), labels[:1], (1, 3, 8, 8), 4, None, 0.5,
                 torch.Generator().manual_seed(40))  # fmt: skip
    via_spec = sample(
        unet, linear_schedule(50), labels[:1], (1, 3, 8, 8), spec, torch.Generator().manual_seed(40)
    )
    assert torch.equal(direct, via_spec)
    with pytest.raises(ValueError, match="eta"):
        sampler_spec("dpmpp2m", eta=0.5)


@pytest.mark.parametrize("option", ["ddim", "ddpm", "dpmpp2m"])
def test_sampler_configs_build_specs_and_distinct_sample_folders(option, tmp_path):
    configs = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(str(configs), version_base="1.3"):  # the group file with its shared base keys
        group = compose("eval", overrides=[f"sampler={option}", "ckpt_path=x.ckpt"]).sampler
    spec = SamplerSpec(**OmegaConf.to_container(group))
    folder = sample_dir(tmp_path, spec, 100, 0).name
    assert spec.name == option and folder.startswith(f"{option}{spec.steps}_")
    assert ("_eta" in folder) == (
        option == "ddim"
    )  # eta names only DDIM's folders (DDPM / DPM-Solver++: null)


class MixtureOptimalEps(torch.nn.Module):
    """The exact eps predictor for bimodal data, x0 ~ 0.3 N(-0.5, 0.1^2) + 0.7 N(0.5, 0.1^2) per pixel: the
    posterior mean E[x0 | x_t] mixes the two Gaussian posterior means with the components' responsibilities,
    and eps = (x_t - alpha_t E[x0 | x_t]) / sigma_t. A non-linear x0 predictor, unlike the Gaussian one."""

    means, weights, s = (
        torch.tensor([-0.5, 0.5], dtype=torch.float64),
        torch.tensor([0.3, 0.7], dtype=torch.float64),
        0.1,
    )

    @classmethod
    def x0(cls, x: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
        alpha, var = abar.sqrt()[..., None], (abar * cls.s**2 + 1 - abar)[..., None]
        centred = x[..., None] - alpha * cls.means
        resp = (cls.weights.log() - centred**2 / (2 * var)).softmax(-1)
        return (resp * (cls.means + alpha * cls.s**2 / var * centred)).sum(-1)

    @classmethod
    def cdf(cls, x: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
        """The marginal CDF of x_t (a mixture of N(alpha m_k, alpha^2 s^2 + sigma^2))."""
        sd = (abar * cls.s**2 + 1 - abar).sqrt()
        z = (x[..., None] - abar.sqrt() * cls.means) / sd
        return (cls.weights * 0.5 * (1 + torch.erf(z / math.sqrt(2)))).sum(-1)

    def forward(self, x, t, y, cond):
        abar = SCHEDULE.alpha_bars[t].double().view(-1, 1, 1, 1).expand_as(x)
        x0 = self.x0(x.double(), abar)
        return ((x.double() - abar.sqrt() * x0) / (1 - abar).sqrt()).to(x.dtype)


def mixture_flow(x_T: torch.Tensor) -> torch.Tensor:
    """The exact answer for the mixture: a 1-D probability-flow ODE keeps the order of its points and carries
    marginal to marginal, so it is the quantile map x_0 = F_0^{-1}(F_T(x_T)) (per pixel; F_0 inverted by
    bisection), followed by the samplers' last step x0(x_{t=0})."""
    abar = SCHEDULE.alpha_bars.double()
    u = MixtureOptimalEps.cdf(x_T.double(), abar[-1])
    lo, hi = torch.full_like(u, -3.0), torch.full_like(u, 3.0)
    for _ in range(60):
        mid = (lo + hi) / 2
        below = MixtureOptimalEps.cdf(mid, abar[0]) < u
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    x = (lo + hi) / 2
    return MixtureOptimalEps.x0(x, abar[0].expand_as(x))


def test_bimodal_data_converges_to_the_exact_quantile_map():
    """Second-order convergence where the x0 predictor is non-linear; 20 steps are as good as DDIM-100, and as
    the steps grow DPM-Solver++ and DDIM-1000 agree."""
    y = torch.zeros(64, dtype=torch.long)
    exact = mixture_flow(_noise(64))

    def draw(name: str, steps: int) -> torch.Tensor:
        spec = sampler_spec(name, steps, guidance=0.0)
        return sample(
            MixtureOptimalEps(), SCHEDULE, y, (64, 1, 4, 4), spec, torch.Generator().manual_seed(0)
        ).double()

    def rms(a: torch.Tensor, b: torch.Tensor) -> float:
        return (a - b).pow(2).mean().sqrt().item()

    dpm = {n: rms(draw("dpmpp2m", n), exact) for n in (10, 20, 40, 80)}
    assert dpm[10] > dpm[20] > dpm[40] > dpm[80] and dpm[40] / dpm[80] > 3.0
    ddim_100, ddim_1000 = draw("ddim", 100), draw("ddim", 1000)
    assert dpm[20] < 1.2 * rms(ddim_100, exact)
    assert rms(draw("dpmpp2m", 80), ddim_1000) < 0.01 and rms(ddim_1000, exact) < 0.01
    assert abs((exact > 0).double().mean().item() - 0.7) < 4 * math.sqrt(0.21 / exact.numel())  # the weights
