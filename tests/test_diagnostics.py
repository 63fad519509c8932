"""PCL diagnostics against hand computations: the PCL / DDPM gradient ratio on eps_hat and the class distances."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from diffrop.losses.diagnostics import class_distances, loss_diagnostics
from diffrop.losses.objective import Objective
from diffrop.losses.step import Step
from diffrop.losses.tau import Constant
from tests.helpers.config_objects import eps_mse, linear_schedule, pcl
from tests.helpers.steps import make_step
from tests.helpers.train_utils import TINY_RUN_OVERRIDES, train_in_process

T = 1000


def _alpha(t: int) -> tuple[float, float]:
    """(alpha_t, abar_t) of the linear schedule 1e-4 .. 0.02 over T steps, written out independently."""
    betas = [1e-4 + (0.02 - 1e-4) * i / (T - 1) for i in range(T)]
    return 1 - betas[t], math.prod(1 - b for b in betas[: t + 1])


def _two_sample_step(seed: int = 0) -> Step:
    g = torch.Generator().manual_seed(seed)
    xt, eps, eps_hat = (torch.randn(2, 1, 2, 2, generator=g, dtype=torch.float64) for _ in range(3))
    eps_hat.requires_grad_()
    y, t = torch.tensor([0, 1]), torch.tensor([30, 400])
    return make_step(y, t, xt=xt, x0=xt, eps=eps, eps_hat=eps_hat, schedule=linear_schedule(T).double(),
                     class_freq=torch.full((2,), 0.5))  # fmt: skip


def _hand_ratio(step: Step, tau0: float) -> float:
    """Two samples, labels 0 / 1, phi = exp, constant tau0, d = |mu_0 - mu_1|^2 / D, per-anchor sum (Algorithm 1):
    L_pcl = (tau0 e^-d + tau0 e^-d) / 2 anchors = tau0 e^-d.  mu_i = (x_i - k_i eps_hat_i) / sqrt(alpha_i) with
    k_i = (1 - alpha_i) / sqrt(1 - abar_i) (Eq. 9), so dL/d eps_hat_i = tau0 e^-d (2 / D) (mu_i - mu_j) c_i,
    c_i = k_i / sqrt(alpha_i): the norm is tau0 e^-d (2 / D) |mu_0 - mu_1| sqrt(c_0^2 + c_1^2).
    L_ddpm = mean over B D of (eps_hat - eps)^2: the gradient norm is 2 |eps_hat - eps| / (B D)."""
    x, e, eh = (v.detach().flatten(1).double() for v in (step.xt, step.eps, step.eps_hat))
    b, dim = x.shape
    mu, c = [], []
    for i, t in enumerate(step.t.tolist()):
        alpha, abar = _alpha(t)
        k = (1 - alpha) / math.sqrt(1 - abar)
        mu.append((x[i] - k * eh[i]) / math.sqrt(alpha))
        c.append(k / math.sqrt(alpha))
    gap = float((mu[0] - mu[1]).norm())
    d = gap**2 / dim
    pcl = tau0 * math.exp(-d) * 2 / dim * gap * math.hypot(*c)
    ddpm = 2 * float((eh - e).norm()) / (b * dim)
    return pcl / ddpm


@pytest.mark.parametrize("tau0", [0.5, 3.0])
def test_grad_ratio_matches_hand_computation(tau0: float) -> None:
    step = _two_sample_step()
    term = pcl("exp", Constant(tau0), distance="mean", reduction="algorithm1_sum", pairing="batch")
    _, parts = Objective({"ddpm": eps_mse(), "pcl": term})(step)
    got = loss_diagnostics(step, parts)["pcl/grad_ratio"].item()
    assert got == pytest.approx(_hand_ratio(step, tau0), rel=1e-4)  # the schedule keeps float32 buffers


def test_grad_ratio_scales_linearly_with_tau0_and_keeps_the_graph() -> None:
    ratios = []
    for tau0 in (0.1, 1.0, 10.0):
        step = _two_sample_step(seed=3)
        total, parts = Objective({"ddpm": eps_mse(), "pcl": pcl("exp", Constant(tau0), pairing="batch")})(
            step
        )
        ratios.append(loss_diagnostics(step, parts)["pcl/grad_ratio"].item())
        total.backward()  # the training backward still works after the diagnostic's autograd.grad
        assert step.eps_hat.grad is not None
    assert ratios[1] == pytest.approx(10 * ratios[0], rel=1e-6)
    assert ratios[2] == pytest.approx(10 * ratios[1], rel=1e-6)


def test_grad_ratio_only_for_terms_beside_ddpm() -> None:
    step = _two_sample_step()
    _, parts = Objective({"ddpm": eps_mse()})(step)
    assert set(loss_diagnostics(step, parts)) == {"pcl/d_between", "pcl/d_within", "eps_slope"}
    _, parts = Objective({"ddpm": eps_mse(), "extra": eps_mse(weight=3.0)})(step)
    assert loss_diagnostics(step, parts)["extra/grad_ratio"].item() == pytest.approx(3.0)  # same term, 3x


def test_class_distances_by_hand() -> None:
    # mu rows (0,0), (1,1), (2,0), (2,2); labels 0, 1, 1, 0; sample 3 label-dropped (takes no part).
    # mean-over-D squared distances: d01 = 1, d02 = 2, d12 = 1. Different labels: (0,1), (0,2) -> 1.5;
    # same label: (1,2) -> 1 (sample 0's partner 3 is dropped).
    mu = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0], [2.0, 2.0]])
    step = make_step([0, 1, 1, 0], cond=[True, True, True, False], mu=mu, shape=(2,))
    got = class_distances(step)
    assert got["pcl/d_between"].item() == pytest.approx(1.5)
    assert got["pcl/d_within"].item() == pytest.approx(1.0)
    # groups {0, 1} and {2, 3} (shared t and eps): only (0,1) is a different-label pair, no same-label pair left
    step.group, step.group_size = torch.tensor([0, 0, 1, 1]), 2
    got = class_distances(step)
    assert got["pcl/d_between"].item() == pytest.approx(1.0)
    assert got["pcl/d_within"].item() == 0.0


def test_class_distances_of_cifar_sized_eq12_groups_match_float64_at_t_900() -> None:
    # Two groups of 8 sharing (t, eps) and an exact denoiser: mu_i - mu_j = sqrt(abar_{t-1}) (x0_i - x0_j), a d
    # of ~1e-2 per value under norms of ~1: the matrix expansion loses ~1e-3 of it, kernel-dependent.
    torch.manual_seed(5)
    sched = linear_schedule(T)
    x0 = torch.rand(16, 3, 32, 32) * 2 - 1
    t = torch.full((16,), 900)
    eps = torch.randn(2, 3, 32, 32).repeat_interleave(8, 0)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3] * 2)
    step = make_step(y, t, x0=x0, xt=sched.q_sample(x0, t, eps), eps=eps, eps_hat=eps, schedule=sched,
                     group=torch.arange(16) // 8, group_size=8)  # fmt: skip
    got = class_distances(step)
    abar_prev = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), 0)[899]
    x = x0.double().flatten(1)
    d = abar_prev * (x[:, None] - x[None, :]).square().mean(-1)
    group = torch.arange(16) // 8
    pairs = (group[:, None] == group[None, :]) & ~torch.eye(16, dtype=torch.bool)
    same = y[:, None] == y[None, :]
    assert got["pcl/d_between"].item() == pytest.approx(d[pairs & ~same].mean().item(), rel=1e-5)
    assert got["pcl/d_within"].item() == pytest.approx(d[pairs & same].mean().item(), rel=1e-5)


def test_eps_slope_by_hand() -> None:
    # eps = (1, 2), (0, 2); eps_hat = (0.5, 1), (0, 0.5): <eps_hat, eps> = 0.5 + 2 + 1 = 3.5, |eps|^2 = 9
    eps = torch.tensor([[1.0, 2.0], [0.0, 2.0]])
    eps_hat = torch.tensor([[0.5, 1.0], [0.0, 0.5]])
    step = make_step([0, 1], eps=eps, eps_hat=eps_hat, shape=(2,))
    assert loss_diagnostics(step, {})["eps_slope"].item() == pytest.approx(3.5 / 9)


@pytest.mark.slow
def test_training_logs_the_diagnostics_to_metrics_csv(tmp_path) -> None:
    run = tmp_path / "run"
    train_in_process([*TINY_RUN_OVERRIDES, "loss=pcl_exp", "trainer.max_steps=3"], run)
    with open(run / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/pcl/grad_ratio")]
    assert len(rows) == 3  # log_every_n_steps=1: every step is a logging step
    for r in rows:
        assert float(r["train/pcl/grad_ratio"]) > 0
        assert float(r["train/pcl/d_between"]) > 0 and float(r["train/pcl/d_within"]) >= 0
        assert abs(float(r["train/eps_slope"])) < 1.5  # an untrained net: near 0


class _Affine(torch.nn.Module):
    """eps_hat = 0.8 x + b_y in float64 (the partner forward's network)."""

    def __init__(self) -> None:
        super().__init__()
        self.b = torch.nn.Parameter(torch.tensor([0.3, -0.2], dtype=torch.float64))

    def forward(self, x, t, y, cond):
        return 0.8 * x + self.b[y].view(-1, *[1] * (x.dim() - 1))


@pytest.mark.parametrize("pairing", ["partner", "same_xt"])
def test_grad_ratio_counts_the_second_forwards_output(pairing: str) -> None:
    """Two samples, labels 0 / 1, each the other's only partner (K = 1). Anchor i's pair is mu_i against mu'_i, the
    partner's forward at t_i; L_pcl = tau0 (e^-d_0 + e^-d_1) / 2. mu and mu' share t_i, so both outputs get a
    gradient of norm a_i = tau0 / 2 e^-d_i (2 / D) |mu_i - mu'_i| c_i (c_i as in ``_hand_ratio``): the whole
    gradient is sqrt(2 sum a_i^2), sqrt(2) times what the anchors' eps_hat alone receive (the reading before
    issue 30)."""
    net = _Affine()
    g = torch.Generator().manual_seed(4)
    x0, eps = (torch.randn(2, 1, 2, 2, generator=g, dtype=torch.float64) for _ in range(2))
    y, t, tau0 = torch.tensor([0, 1]), torch.tensor([30, 400]), 2.0
    sched = linear_schedule(T).double()
    xt = sched.q_sample(x0, t, eps)
    term = pcl("exp", Constant(tau0), distance="mean", reduction="algorithm1_sum", pairing=pairing)
    step = make_step(y, t, x0=x0, xt=xt, eps=eps, eps_hat=net(xt, t, y, None), schedule=sched, net=net,
                     class_freq=torch.full((2,), 0.5), terms=[term])  # fmt: skip
    _, parts = Objective({"ddpm": eps_mse(), "pcl": term})(step)
    got = loss_diagnostics(step, parts)["pcl/grad_ratio"].item()
    sq, dim = 0.0, 4
    for i in range(2):
        alpha, abar = _alpha(int(t[i]))
        k = (1 - alpha) / math.sqrt(1 - abar)
        x_i = xt[i].flatten()
        x_p = (
            x_i
            if pairing == "same_xt"
            else math.sqrt(abar) * x0[1 - i].flatten() + math.sqrt(1 - abar) * eps[i].flatten()
        )
        mu_i = (x_i - k * (0.8 * x_i + net.b[i].item())) / math.sqrt(alpha)
        mu_p = (x_p - k * (0.8 * x_p + net.b[1 - i].item())) / math.sqrt(alpha)
        gap = float((mu_i - mu_p).norm())
        sq += (tau0 / 2 * math.exp(-(gap**2) / dim) * 2 / dim * gap * k / math.sqrt(alpha)) ** 2
    ddpm = 2 * float((step.eps_hat - eps).norm()) / (2 * dim)
    assert got == pytest.approx(math.sqrt(2 * sq) / ddpm, rel=1e-4)  # the schedule keeps float32 buffers
    anchors_only = math.sqrt(sq) / ddpm
    assert got / anchors_only == pytest.approx(math.sqrt(2), rel=1e-4)
