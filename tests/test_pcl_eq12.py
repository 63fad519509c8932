"""PCL as DiffROP Eq. 12 writes it: pairs share t and eps, so the noise cancels between them.

Independent expectations: hand algebra of the forward process, a naive double loop over pairs with groups, and
the uniform distribution of t that keeps the DDPM loss unbiased.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffrop.diffusion.noising import draw_noise
from diffrop.losses.objective import Objective
from diffrop.losses.tau import Constant, ExpDecay
from tests.helpers.config_objects import eps_mse, linear_schedule, pcl
from tests.helpers.steps import make_step
from tests.test_losses import PHI_REF

T = 1000


def test_groups_share_t_and_eps_and_nothing_else() -> None:
    torch.manual_seed(0)
    x0 = torch.randn(10, 3, 2, 2)
    t, eps, group = draw_noise(x0, T, group_size=4)  # groups of 4, 4 and 2
    assert group.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    for g in range(3):
        members = group == g
        assert (t[members] == t[members][0]).all()
        assert (eps[members] == eps[members][:1]).all()
    assert len(set(t.tolist())) == 3  # three strata: three different timesteps
    assert not torch.equal(eps[0], eps[4]) and not torch.equal(eps[4], eps[8])


def test_group_timesteps_fall_in_distinct_strata() -> None:
    torch.manual_seed(1)
    for _ in range(50):
        t, _, _ = draw_noise(torch.zeros(24, 1), T, group_size=3)  # 8 groups, strata of 125 steps
        per_group = t[::3]
        assert sorted((per_group // 125).tolist()) == list(range(8))


def test_group_size_one_is_plain_ddpm_noise() -> None:
    t, eps, group = draw_noise(torch.zeros(5, 2), T, group_size=1)
    assert group is None and t.shape == (5,) and eps.shape == (5, 2)


def test_each_sample_t_is_uniform_so_the_ddpm_loss_stays_unbiased() -> None:
    # T = 10, batch 7, groups of 3 (3, 3, 1: unequal groups). Each position's t must be uniform on 0..9, so
    # E[batch mean of f(t)] = mean over t of f(t) for any per-sample loss f (the DDPM loss's expectation over t).
    torch.manual_seed(2)
    n, num_steps = 5000, 10
    counts = torch.zeros(7, num_steps)
    f = torch.tensor([float(s) ** 3 for s in range(num_steps)])
    batch_means = torch.zeros(n)
    for k in range(n):
        t, _, _ = draw_noise(torch.zeros(7, 1), num_steps, group_size=3)
        counts[torch.arange(7), t] += 1
        batch_means[k] = f[t].mean()
    expected = n / num_steps
    chi2 = ((counts - expected) ** 2 / expected).sum(1)  # per position, 9 degrees of freedom
    assert (chi2 < 33.7).all(), chi2  # chi2_{9} 0.9999 quantile: a fair test fails once in 10^4
    exact = f.mean().item()  # 202.5
    se = batch_means.std().item() / math.sqrt(n)
    assert abs(batch_means.mean().item() - exact) < 4 * se


def test_noise_cancels_between_members_of_a_group() -> None:
    # x_t^i - x_t^j = sqrt(abar_t) (x_0^i - x_0^j); with the true noise as the estimate, Eq. 9's means differ by
    # sqrt(abar_{t-1}) (x_0^i - x_0^j) (the posterior mean's coefficients sum to that), so d_ij under eq12 is
    # abar_{t-1} |x_0^i - x_0^j|^2: no noise left in it.
    torch.manual_seed(3)
    sched = linear_schedule(T)
    x0 = torch.randn(4, 3, 2, 2)
    t, eps, _ = draw_noise(x0, T, group_size=2)
    xt = sched.q_sample(x0, t, eps)
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    for i, j in ((0, 1), (2, 3)):
        ti = int(t[i])
        assert torch.allclose(xt[i] - xt[j], abar[ti].sqrt().float() * (x0[i] - x0[j]), atol=1e-5)
        abar_prev = 1.0 if ti == 0 else float(abar[ti - 1])
        pair = [i, j]
        step = make_step([0, 1], t[pair], x0=x0[pair], xt=xt[pair], eps=eps[pair], eps_hat=eps[pair],
                         schedule=sched, group=torch.zeros(2, dtype=torch.long))  # fmt: skip
        term = pcl(
            "neg_l2", Constant(1.0), distance="sum", reduction="pairs_mean", pairing="eq12", group_size=2
        )
        d = -term(step).item()  # phi = -d, tau = 1, mean over the 2 ordered pairs
        assert d == pytest.approx(abar_prev * float((x0[i] - x0[j]).square().sum()), rel=1e-3)


def test_eq12_distance_of_cifar_sized_pairs_matches_float64_at_t_900() -> None:
    # A float32 d from |a|^2 + |b|^2 - 2 a.b loses ~1e-3 of its value here (a small d from large norms, with an
    # error that depends on the CPU's vector kernel); from the differences mu_i - mu_j it is exact to rounding.
    torch.manual_seed(4)
    sched = linear_schedule(T)
    x0 = torch.rand(8, 3, 32, 32) * 2 - 1
    t = torch.full((8,), 900)
    eps = torch.randn(1, 3, 32, 32).expand(8, -1, -1, -1)
    xt = sched.q_sample(x0, t, eps)
    step = make_step(list(range(8)), t, x0=x0, xt=xt, eps=eps, eps_hat=eps, schedule=sched,
                     group=torch.zeros(8, dtype=torch.long))  # fmt: skip
    term = pcl("neg_l2", Constant(1.0), distance="sum", reduction="pairs_mean", pairing="eq12", group_size=8)
    d = -term(step).item()  # mean of d over the 56 ordered pairs of one group of 8 labels
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    abar_prev = torch.cumprod(1 - betas, 0)[899]
    x = x0.double().flatten(1)
    expected = abar_prev * (x[:, None] - x[None, :]).square().sum(-1).sum() / 56  # the diagonal adds 0
    assert d == pytest.approx(float(expected), rel=1e-5)


def naive_eq12(mu, y, t, cond, group, phi, tau, margin, abar_prev, distance, reduction) -> torch.Tensor:
    """Algorithm 1 with Eq. 12's pairs: a double loop over pairs of one group, float64, differentiable."""
    mu = mu.double().flatten(1)
    total, pairs = mu.new_zeros(()), 0
    for i in range(len(y)):
        for j in range(len(y)):
            if y[i] != y[j] and cond[i] and cond[j] and group[i] == group[j]:
                d = (mu[i] - mu[j]).square().sum()
                if distance == "mean":
                    d = d / mu.shape[1]
                m = margin * (abar_prev[int(t[i])] if abar_prev is not None else 1.0)
                w = float(tau(torch.tensor(float(t[i]) / T, dtype=torch.float64)))
                total = total + w * (torch.clamp(m - d, min=0) if phi == "hinge" else PHI_TORCH[phi](d))
                pairs += 1
    return total / max(pairs if reduction == "pairs_mean" else int(cond.sum()), 1)


PHI_TORCH = {"neg_l2": lambda d: -d, "recip": lambda d: 1 / (1 + d), "exp": lambda d: torch.exp(-d)}


@pytest.mark.parametrize(
    ("phi", "distance", "reduction", "margin_schedule"),
    [
        ("exp", "mean", "algorithm1_sum", "constant"),
        ("recip", "sum", "pairs_mean", "constant"),
        ("neg_l2", "mean", "pairs_mean", "constant"),
        ("hinge", "mean", "algorithm1_sum", "constant"),
        ("hinge", "mean", "algorithm1_sum", "abar"),
        ("hinge", "sum", "pairs_mean", "abar"),
    ],
)
def test_eq12_matches_naive_double_loop_in_value_and_gradient(
    phi, distance, reduction, margin_schedule
) -> None:
    g = torch.Generator().manual_seed(4)
    b, group_size = 11, 4
    sched = linear_schedule(T)
    mu = (torch.randn(b, 2, 3, 3, generator=g) * 0.5).requires_grad_()
    y = torch.randint(0, 3, (b,), generator=g)
    cond = torch.rand(b, generator=g) > 0.2
    group = torch.arange(b) // group_size
    t = torch.tensor([50, 500, 900])[group]  # one t per group, as the training step draws them
    tau, margin = ExpDecay(1.3, 0.4), (2.0 if distance == "mean" else 30.0)
    step = make_step(y, t, cond, mu=mu)
    step.group = group
    term = pcl(phi, tau, weight=0.7, margin=margin, distance=distance, reduction=reduction, pairing="eq12", group_size=group_size,
               margin_schedule=margin_schedule)  # fmt: skip
    got = term(step)
    abar_prev = sched.alpha_bars_prev.double() if margin_schedule == "abar" else None
    ref_mu = mu.detach().double().requires_grad_()
    expected = 0.7 * naive_eq12(ref_mu, y, t, cond, group, phi, tau, margin, abar_prev, distance, reduction)
    assert got.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-7)
    got.backward()
    expected.backward()
    assert torch.allclose(mu.grad.double(), ref_mu.grad, rtol=1e-3, atol=1e-6)


def test_hinge_margin_follows_abar_prev_by_hand() -> None:
    # one pair at t = 0 (abar_{-1} = 1) and one at t = 999: margin 2 * abar_{t-1}; d = 1 (mean over 2 elements)
    sched = linear_schedule(T)
    mu = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    step = make_step([0, 1, 0, 1], [0, 0, 999, 999], mu=mu)
    step.group = torch.tensor([0, 0, 1, 1])
    term = pcl(
        "hinge",
        Constant(1.0),
        margin=2.0,
        reduction="pairs_mean",
        pairing="eq12",
        group_size=2,
        margin_schedule="abar",
    )
    late = 2.0 * float(sched.alpha_bars[998])  # ~8e-5: the hinge is off there
    assert late < 1.0
    assert term(step).item() == pytest.approx((2 * (2.0 - 1.0) + 2 * 0.0) / 4, rel=1e-5)


def test_pairs_across_groups_do_not_count() -> None:
    step = make_step([0, 1, 0, 1], [7, 7, 300, 300], mu=torch.randn(4, 2))
    step.group = torch.tensor([0, 0, 1, 1])
    pcl("exp", Constant(1.0), pairing="eq12", group_size=2)(step)
    assert (
        step.diagnostics["pcl/pairs"].item() == 4
    )  # (0,1), (1,0), (2,3), (3,2); (0,3) and (1,2) cross groups


def test_eq12_refuses_a_step_without_groups() -> None:
    with pytest.raises(ValueError, match="pairing=eq12"):
        pcl("exp", Constant(1.0), pairing="eq12")(make_step([0, 1], [1, 2], mu=torch.zeros(2, 2)))


def test_objective_asks_for_groups_only_for_eq12() -> None:
    assert Objective({"ddpm": eps_mse()}).noise_group_size == 1
    assert (
        Objective({"ddpm": eps_mse(), "pcl": pcl("exp", Constant(1.0), pairing="batch")}).noise_group_size
        == 1
    )
    assert (
        Objective(
            {"ddpm": eps_mse(), "pcl": pcl("exp", Constant(0.0), pairing="eq12", group_size=6)}
        ).noise_group_size
        == 6
    )


def test_phi_reference_agrees_with_torch_forms() -> None:  # the two references above describe one phi
    for name, f in PHI_TORCH.items():
        assert float(f(torch.tensor(0.3, dtype=torch.float64))) == pytest.approx(PHI_REF[name](0.3, 1.0))


def test_training_step_of_pairing_eq12_draws_groups(tmp_path) -> None:
    """`loss=pcl_exp loss.terms.pcl.pairing=eq12` as a user composes it: the module's one forward pass shares
    (t, eps) per group of 8."""
    from types import SimpleNamespace

    from diffrop.build import build_datamodule, build_module
    from tests.helpers.train_utils import TINY_RUN_OVERRIDES
    from tests.test_configs import compose_train

    overrides = [*TINY_RUN_OVERRIDES, "loss=pcl_exp", "loss.terms.pcl.pairing=eq12", "data.batch_size=20"]
    cfg = compose_train(overrides, tmp_path)
    assert cfg.loss.terms.pcl.group_size == 8
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    module._trainer = SimpleNamespace(world_size=1)  # forward_step only asks the trainer for the world size
    torch.manual_seed(0)
    x0 = torch.rand(20, 3, 16, 16) * 2 - 1
    step = module.forward_step(x0, torch.arange(20) % 10)
    assert step.group.tolist() == [0] * 8 + [1] * 8 + [2] * 4
    abar = module.schedule.alpha_bars[step.t[0]]
    assert (step.t[:8] == step.t[0]).all() and torch.equal(step.eps[3], step.eps[0])
    assert torch.allclose(step.xt[0] - step.xt[5], abar.sqrt() * (x0[0] - x0[5]), atol=1e-5)


# ---------------------------------------------------------------- pairing=partner: one extra forward per anchor


class RecordingNet(torch.nn.Module):
    """eps_hat = scale * 0 (a constant prediction), remembering the labels and timesteps it was asked about."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, t, y, cond):
        self.calls.append((t.clone(), y.clone()))
        return self.scale * torch.zeros_like(x)


def test_partner_is_noised_with_the_anchors_t_and_eps_so_the_noise_cancels() -> None:
    # eps_hat = 0 gives mu = x_t / sqrt(alpha_t), so mu_i - mu_j = sqrt(abar_t / alpha_t) (x_0^i - x_0^j) when both
    # share t and eps, whatever eps is. Two samples, labels 0 / 1: each is the other's only partner, at its own t.
    sched = linear_schedule(T)
    g = torch.Generator().manual_seed(5)
    x0, eps = torch.randn(2, 3, 2, 2, generator=g), torch.randn(2, 3, 2, 2, generator=g) * 10
    t = torch.tensor([100, 700])
    net = RecordingNet()
    term = pcl("neg_l2", Constant(1.0), distance="sum", reduction="pairs_mean", pairing="partner")
    step = make_step([0, 1], t, x0=x0, xt=sched.q_sample(x0, t, eps), eps=eps, eps_hat=torch.zeros_like(x0),
                     schedule=sched, net=net, terms=[term])  # fmt: skip
    got = -term(step).item()  # phi = -d, mean over the 2 pairs
    gap = float((x0[0] - x0[1]).square().sum())
    ratio = sched.alpha_bars / sched.alphas
    assert got == pytest.approx(float(ratio[100] + ratio[700]) / 2 * gap, rel=1e-4)
    (t_seen, y_seen) = net.calls[0]
    assert t_seen.tolist() == [100, 700] and y_seen.tolist() == [
        1,
        0,
    ]  # the partner's label at the anchor's t


def test_partners_have_another_label_and_a_kept_label() -> None:
    torch.manual_seed(0)
    net = RecordingNet()
    y = torch.tensor([0, 0, 0, 1, 3, 2])  # sample 4, the only label 3, has its label dropped
    cond = torch.tensor([True, True, True, True, False, True])
    term = pcl("exp", Constant(1.0), pairing="partner")
    for _ in range(30):
        step = make_step(y, cond=cond, mu=torch.zeros(6, 4), net=net, shape=(4,), terms=[term])
        term(step)
    seen = torch.stack([partner_y for _, partner_y in net.calls])  # [30, 6]
    kept = cond.nonzero().squeeze(1)
    assert (seen[:, kept] != y[kept]).all()  # never the anchor's own label
    assert (seen[:, kept] != 3).all()  # never the dropped sample
    assert set(seen[:, 0].tolist()) == {1, 2}  # both other kept labels get drawn
    assert step.diagnostics["pcl/pairs"].item() == 5  # every kept anchor has a partner; the dropped one none


def test_partner_pairing_keeps_independent_ddpm_draws_and_refuses_global_pairs() -> None:
    assert (
        Objective({"ddpm": eps_mse(), "pcl": pcl("exp", Constant(1.0), pairing="partner")}).noise_group_size
        == 1
    )
    with pytest.raises(ValueError, match="pairing=partner"):
        pcl("exp", Constant(1.0), pairing="partner", pairs="global")
    term = pcl("exp", Constant(1.0), pairing="partner")
    step = make_step([2, 2, 2], mu=torch.zeros(3, 4), net=RecordingNet(), shape=(4,), terms=[term])
    assert term(step).item() == 0.0  # one class: no pair


class LabelNet(torch.nn.Module):
    """eps_hat = label (every pixel), remembering the inputs it was asked about."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x, t, y, cond):
        self.inputs.append(x.clone())
        return y.float().view(-1, *[1] * (x.dim() - 1)).expand_as(x)


def test_same_xt_compares_two_labels_denoisers_at_the_anchors_own_x_t() -> None:
    # mu(x_t, c) = (x_t - beta_t / sqrt(1 - abar_t) eps_hat(x_t, c)) / sqrt(alpha_t), so at one x_t the labels' gap is
    # d = (beta_t / sqrt(alpha_t (1 - abar_t)))^2 |eps_hat(x_t, c) - eps_hat(x_t, c')|^2: here (y_i - y_j)^2 per pixel,
    # whatever the images are.
    sched = linear_schedule(T)
    g = torch.Generator().manual_seed(7)
    x0, eps = torch.randn(2, 3, 2, 2, generator=g), torch.randn(2, 3, 2, 2, generator=g)
    t, y = torch.tensor([50, 600]), torch.tensor([1, 4])
    xt = sched.q_sample(x0, t, eps)
    net = LabelNet()
    eps_hat = net(xt, t, y, torch.ones(2, dtype=torch.bool))
    net.inputs.clear()
    term = pcl("neg_l2", Constant(1.0), distance="sum", reduction="pairs_mean", pairing="same_xt")
    step = make_step(y, t, x0=x0, xt=xt, eps=eps, eps_hat=eps_hat, schedule=sched, net=net, terms=[term])
    got = -term(step).item()
    coef2 = sched.betas**2 / (sched.alphas * (1 - sched.alpha_bars))
    assert got == pytest.approx(float(coef2[50] + coef2[600]) / 2 * (4 - 1) ** 2 * 12, rel=1e-4)
    # one extra forward, at the anchors' own x_t
    assert len(net.inputs) == 1 and torch.equal(net.inputs[0], xt)
    with pytest.raises(ValueError, match="pairing=same_xt"):
        pcl("exp", Constant(1.0), pairing="same_xt", pairs="global")


def test_default_pcl_is_eq12_by_partner_forward(tmp_path) -> None:
    """`loss=pcl_exp` as a user composes it: independent DDPM draws (no groups) and one extra network forward, for
    the partners (docs/design.md section 4: grouping costs DDPM quality on both CPU testbeds)."""
    from types import SimpleNamespace

    from diffrop.build import build_datamodule, build_module
    from tests.helpers.train_utils import TINY_RUN_OVERRIDES
    from tests.test_configs import compose_train

    cfg = compose_train([*TINY_RUN_OVERRIDES, "loss=pcl_exp", "data.batch_size=20"], tmp_path)
    assert cfg.loss.terms.pcl.pairing == "partner" and cfg.tau.tau0 == 0.2
    module = build_module(cfg, build_datamodule(cfg))
    module._trainer = SimpleNamespace(world_size=1)
    calls = []
    module.net.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    torch.manual_seed(0)
    step = module.forward_step(torch.rand(20, 3, 16, 16) * 2 - 1, torch.arange(20) % 10)
    assert step.group is None and len(set(step.t.tolist())) > 10  # each sample its own t
    module.objective(step)
    assert calls == [40]  # one call: the step's batch and the partners', concatenated


# ------------------------------------------- partner / same_xt: an unbiased estimate of Algorithm 1's sum (issue 30)


class AffineNet(torch.nn.Module):
    """eps_hat = w x + b_y, float64: parameters to compare gradients on, a different output per label."""

    def __init__(self, classes: int, shape: tuple[int, ...]) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(11)
        self.w = torch.nn.Parameter(torch.tensor(0.8, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.randn(classes, *shape, generator=g, dtype=torch.float64) * 0.3)

    def forward(self, x, t, y, cond):
        return self.w * x + self.b[y]


def _linear_betas() -> torch.Tensor:
    return torch.linspace(1e-4, 0.02, T, dtype=torch.float64)


def naive_algorithm1(net, x0, xt, eps, y, t, cond, pairing, tau, reduction) -> torch.Tensor:
    """Algorithm 1 with Eq. 12's pairs, written from the paper: for every anchor i and every conditioned j of
    another label, x_0^j noised with (t_i, eps_i) (``partner``) or the anchor's own x_t (``same_xt``) is denoised
    under y_j; tau(t_i) exp(-d_ij), d the mean over values of |mu_i - mu_j|^2 with mu of Eq. 9. Per-anchor sum,
    mean over anchors (``algorithm1_sum``) or mean over all those pairs (``pairs_mean``)."""
    betas = _linear_betas()
    abar = torch.cumprod(1 - betas, 0)

    def mu(x, ti, label):
        e = net(x[None], torch.tensor([ti]), torch.tensor([label]), None)[0]
        return (x - betas[ti] / (1 - abar[ti]).sqrt() * e) / (1 - betas[ti]).sqrt()

    total, pairs = x0.new_zeros(()), 0
    for i in range(len(y)):
        if not cond[i]:
            continue
        ti = int(t[i])
        mu_i = mu(xt[i], ti, int(y[i]))
        for j in range(len(y)):
            if y[j] == y[i] or not cond[j]:
                continue
            x_j = xt[i] if pairing == "same_xt" else abar[ti].sqrt() * x0[j] + (1 - abar[ti]).sqrt() * eps[i]
            d = (mu_i - mu(x_j, ti, int(y[j]))).square().mean()
            total = total + float(tau(torch.tensor(ti / T, dtype=torch.float64))) * torch.exp(-d)
            pairs += 1
    return total / (pairs if reduction == "pairs_mean" else int(cond.sum()))


@pytest.mark.parametrize(
    ("pairing", "reduction", "partners"),
    [("partner", "algorithm1_sum", 1), ("partner", "pairs_mean", 2), ("same_xt", "algorithm1_sum", 1)],
)
def test_partner_draws_average_to_algorithm1_in_value_and_gradient(pairing, reduction, partners) -> None:
    # 7 samples, labels 0 x4, 1 x2, 2 x1 (K_i = 3 for a head anchor, 5 or 6 otherwise), one label dropped: the mean
    # of many draws of the one-partner term equals the double loop within 5 standard errors of that mean. Before
    # issue 30 a draw was phi(d_ij) without K_i: a third to a sixth of Algorithm 1's sum, dozens of errors away.
    g = torch.Generator().manual_seed(12)
    y = torch.tensor([0, 0, 1, 0, 2, 1, 0])
    cond = torch.tensor([True, True, True, True, True, True, False])
    x0 = torch.rand(7, 1, 2, 2, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(7, 1, 2, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([20, 150, 300, 60, 500, 10, 90])
    sched = linear_schedule(T).double()
    tau = ExpDecay(1.5, 0.5)
    net = AffineNet(3, (1, 2, 2))
    xt = sched.q_sample(x0, t, eps)
    expected = naive_algorithm1(net, x0, xt, eps, y, t, cond, pairing, tau, reduction)
    expected_grad = torch.autograd.grad(expected, [net.w, net.b])
    many = {"partners": partners} if partners > 1 else {}  # m = 1 from the YAML
    term = pcl("exp", tau, distance="mean", reduction=reduction, pairing=pairing, **many)
    torch.manual_seed(13)
    values, grads = [], []
    for _ in range(3000):
        step = make_step(
            y,
            t,
            cond,
            x0=x0,
            xt=xt,
            eps=eps,
            eps_hat=net(xt, t, y, cond),
            schedule=sched,
            net=net,
            terms=[term],
        )
        value = term(step)
        values.append(value.detach())
        grads.append(torch.cat([gr.flatten() for gr in torch.autograd.grad(value, [net.w, net.b])]))
    values, grads = torch.stack(values), torch.stack(grads)
    se = values.std() / len(values) ** 0.5
    assert abs(values.mean() - expected) < 5 * se, (values.mean().item(), expected.item(), se.item())
    want = torch.cat([gr.flatten() for gr in expected_grad])
    grad_se = grads.std(0) / len(grads) ** 0.5
    assert ((grads.mean(0) - want).abs() <= 5 * grad_se + 1e-12).all()


def test_partners_draws_m_forwards_and_weighs_each_pair_by_k_over_m() -> None:
    # labels 0, 0, 1: anchor 2 (label 1) has K = 2 partners, anchors 0 and 1 one each (K = 1). neg_l2 with the
    # RecordingNet (eps_hat = 0): d of a pair is sqrt(abar_t / alpha_t)^2 |x_0^i - x_0^j|^2, as above. With
    # partners = 4 the term is sum_i K_i / 4 sum_k -d_ij_k / 3 anchors; check it by hand against the drawn j.
    sched = linear_schedule(T)
    g = torch.Generator().manual_seed(14)
    x0, eps = torch.randn(3, 1, 2, 2, generator=g), torch.randn(3, 1, 2, 2, generator=g)
    t = torch.tensor([40, 400, 800])
    net = RecordingNet()
    term = pcl(
        "neg_l2", Constant(1.0), distance="sum", reduction="algorithm1_sum", pairing="partner", partners=4
    )
    torch.manual_seed(0)
    step = make_step([0, 0, 1], t, x0=x0, xt=sched.q_sample(x0, t, eps), eps=eps, eps_hat=torch.zeros_like(x0),
                     schedule=sched, net=net, terms=[term])  # fmt: skip
    got = term(step).item()
    assert len(net.calls) == 4 and len(step.extra_forwards) == 4  # one forward of the batch per partner draw
    partner_y = torch.stack([y for _, y in net.calls], 1)  # [3, 4] labels of the drawn partners
    assert (partner_y[:2] == 1).all() and (partner_y[2] == 0).all()
    ratio = sched.alpha_bars / sched.alphas
    x = x0.flatten(1).double()
    total = 0.0
    for i, k_i in ((0, 1), (1, 1)):
        total += k_i / 4 * 4 * float(ratio[t[i]]) * float((x[i] - x[2]).square().sum())
    # anchor 2's partners: sample 0 or 1, which one is not recorded by label; both extra inputs tell
    for k, f in enumerate(step.extra_forwards):
        j_image = (f.xt[2] - (1 - sched.alpha_bars[800]).sqrt() * eps[2]) / sched.alpha_bars[800].sqrt()
        j = int(torch.argmin((x0[:2] - j_image).flatten(1).square().sum(1)))
        total += 2 / 4 * float(ratio[800]) * float((x[2] - x[j]).square().sum())
        assert f.eps is not None and torch.equal(f.y, partner_y[:, k])
    assert -got == pytest.approx(total / 3, rel=1e-4)


def test_partner_forward_feeds_the_ddpm_loss_when_asked() -> None:
    # RecordingNet predicts 0, so the partners' eps-MSE is mean(eps^2) (the partner shares its anchor's eps)
    from diffrop.losses.ddpm import PartnerEpsMSE

    g = torch.Generator().manual_seed(15)
    eps = torch.randn(4, 1, 2, 2, generator=g)
    feed = PartnerEpsMSE(weight=0.5)
    with pytest.raises(ValueError, match="ddpm_partner"):
        feed(make_step([0, 1, 0, 1], [5, 50, 500, 900], eps=eps))  # no partner forward
    partner = pcl("exp", Constant(1.0), pairing="partner")
    step = make_step([0, 1, 0, 1], [5, 50, 500, 900], eps=eps, net=RecordingNet(), terms=[partner])
    partner(step)
    assert feed(step).item() == pytest.approx(0.5 * float(eps.square().mean()), rel=1e-6)
    term = pcl("exp", Constant(1.0), pairing="same_xt")
    same_xt = make_step([0, 1], eps=eps[:2], net=RecordingNet(), terms=[term])
    term(same_xt)  # x_t under another label: not a DDPM sample
    with pytest.raises(ValueError, match="ddpm_partner"):
        feed(same_xt)


def test_one_sided_push_moves_only_the_rarer_members_output() -> None:
    # labels 0 (frequency 0.9) and 1 (0.1): sample 0's partner is sample 1 and vice versa. With push=rarer the head
    # member of each pair gets no gradient (its own eps_hat for anchor 0, the partner forward's for anchor 1); the
    # value is the same as with both sides pushed.
    sched = linear_schedule(T).double()
    g = torch.Generator().manual_seed(16)
    x0 = torch.rand(2, 1, 2, 2, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(2, 1, 2, 2, generator=g, dtype=torch.float64)
    t, y = torch.tensor([100, 300]), torch.tensor([0, 1])
    xt = sched.q_sample(x0, t, eps)
    net = AffineNet(2, (1, 2, 2))
    values, grads = {}, {}
    for push in ("both", "rarer"):
        term = pcl("neg_l2", Constant(1.0), pairing="partner", push=push)
        step = make_step(y, t, x0=x0, xt=xt, eps=eps, eps_hat=net(xt, t, y, None), schedule=sched, net=net,
                         class_freq=torch.tensor([0.9, 0.1]), terms=[term])  # fmt: skip
        values[push] = term(step)
        grads[push] = torch.autograd.grad(values[push], step.outputs)  # [main, partner forward]
    assert values["rarer"].item() == pytest.approx(values["both"].item(), rel=1e-12)
    main, partner = grads["rarer"]
    assert (main[0] == 0).all() and (main[1] != 0).all()  # anchor 0 is the head: frozen; anchor 1 moves
    assert (partner[0] != 0).all() and (
        partner[1] == 0
    ).all()  # the tail partner of anchor 0 moves; not the head
    assert torch.equal(main[1], grads["both"][0][1]) and torch.equal(partner[0], grads["both"][1][0])
    with pytest.raises(ValueError, match="push=rarer"):
        pcl("exp", Constant(1.0), pairing="batch", push="rarer")


class ExactGaussianNet(torch.nn.Module):
    """The Bayes-optimal eps* of classes x_0 ~ N(m_c, s^2 I): x_t | c ~ N(sqrt(abar) m_c, (abar s^2 + 1 - abar) I),
    so E[eps | x_t, c] = sqrt(1 - abar) (x_t - sqrt(abar) m_c) / (abar s^2 + 1 - abar)."""

    def __init__(self, means: torch.Tensor, sd: float) -> None:
        super().__init__()
        self.means, self.sd = means, sd
        self.one = torch.nn.Parameter(torch.ones((), dtype=torch.float64))  # outputs that carry a gradient
        self.abar = torch.cumprod(1 - _linear_betas(), 0)

    def forward(self, x, t, y, cond):
        a = self.abar[t].view(-1, *[1] * (x.dim() - 1))
        return self.one * (1 - a).sqrt() * (x - a.sqrt() * self.means[y]) / (a * self.sd**2 + 1 - a)


@pytest.mark.parametrize("pairing", ["partner", "eq12"])
def test_default_hinge_rests_for_the_true_denoiser_on_separated_classes(pairing) -> None:
    # Two classes 1.2 apart in every value (sd 0.05): with eps* the hinge of the default config has nothing to
    # push at any t (zero value and zero gradient on every output), so p_theta = q stays its optimum (Eq. 15).
    # The margin before issue 30 (1.0, constant) is above d wherever abar_{t-1} * 1.44 < 1 (t >= ~180): on there.
    # Overlapping classes (0.2 apart, sd 0.5, one class-1 image inside class 0) still get pushed.
    for half_gap, sd, rests in ((0.6, 0.05, True), (0.1, 0.5, False)):
        g = torch.Generator().manual_seed(17)
        means = (
            torch.stack([torch.full((16,), half_gap), torch.full((16,), -half_gap)]).double().view(2, 1, 4, 4)
        )
        y = torch.tensor([0, 1] * 4)
        x0 = means[y] + sd * torch.randn(8, 1, 4, 4, generator=g, dtype=torch.float64)
        if not rests:
            x0[1] = x0[0] + 0.01
        net = ExactGaussianNet(means, sd)
        sched = linear_schedule(T).double()
        pushed = 0.0
        for t_value in (0, 10, 100, 300, 600, 900, 999):
            t = torch.full((8,), t_value)
            eps = torch.randn(1, 1, 4, 4, generator=g, dtype=torch.float64).expand(8, -1, -1, -1)
            xt = sched.q_sample(
                x0, t, eps
            )  # one eps for all: eq12's groups; partner re-noises with it anyway
            eps_hat = net(xt, t, y, None).requires_grad_()
            term = pcl("hinge", Constant(1.0), pairing=pairing)
            step = make_step(y, t, x0=x0, xt=xt, eps=eps, eps_hat=eps_hat, schedule=sched, net=net, terms=[term],
                             group=torch.zeros(8, dtype=torch.long) if pairing == "eq12" else None)  # fmt: skip
            value = term(step)
            # on the anchors' eps_hat and, through the network, on the partner forward's outputs
            grads = torch.autograd.grad(value, [eps_hat, net.one], allow_unused=True)
            pushed += value.item() + sum(float(gr.abs().sum()) for gr in grads if gr is not None)
        assert (pushed == 0.0) == rests, (sd, pushed)


def test_one_sided_push_under_eq12_freezes_the_head_members_of_each_group() -> None:
    # groups {0, 1} and {2, 3}; labels 0 (frequency 0.7) in each, against 1 and 2: only samples 1 and 3 move, and by
    # neg_l2's gradient -(2 / 3) (mu_i - mu_j) per ordered pair with i the rarer one (distance mean over 3 values,
    # mean over the 4 anchors, each pair counted from both ends with the head end frozen)
    mu = torch.tensor(
        [[0.0, 1.0, 2.0], [1.0, 1.0, 0.0], [0.5, -1.0, 0.0], [2.0, 0.0, 1.0]], requires_grad=True
    )
    step = make_step([0, 1, 0, 2], [5, 5, 9, 9], mu=mu, shape=(3,), class_freq=torch.tensor([0.7, 0.2, 0.1]))
    step.group = torch.tensor([0, 0, 1, 1])
    pcl("neg_l2", Constant(1.0), pairing="eq12", group_size=2, push="rarer")(step).backward()
    expected = torch.zeros(4, 3)
    for rare, head in ((1, 0), (3, 2)):
        expected[rare] = -2 * (2 / 3) * (mu[rare] - mu[head]).detach() / 4
    assert torch.allclose(mu.grad, expected, atol=1e-6)


# ------------------------------------------------- the step contract: a term declares, the module evaluates


class Probe:
    """A term that asks for groups of 4 and one extra forward of the step's x_t under label 0, unconditioned."""

    def __init__(self) -> None:
        from diffrop.losses.step import StepNeeds

        self.needs = StepNeeds(group_size=4, forwards=self.forwards)
        self.asked = 0

    def forwards(self, step):
        from diffrop.losses.step import Forward

        self.asked += 1
        return [Forward(xt=step.xt, t=step.t, y=torch.zeros_like(step.y), cond=~step.cond, eps=None, by=self)]

    def __call__(self, step):
        (f,) = step.forwards_by(self)
        return f.eps_hat.square().mean()


def test_the_module_gives_a_term_exactly_the_grouping_and_forwards_it_declares(tmp_path) -> None:
    from types import SimpleNamespace

    from diffrop.build import build_datamodule, build_module
    from tests.helpers.train_utils import TINY_RUN_OVERRIDES
    from tests.test_configs import compose_train

    cfg = compose_train([*TINY_RUN_OVERRIDES, "loss=ddpm", "data.batch_size=10"], tmp_path)
    module = build_module(cfg, build_datamodule(cfg))
    module._trainer = SimpleNamespace(world_size=1)
    module.objective = Objective({"ddpm": eps_mse(), "probe": (probe := Probe())})
    calls = []
    module.net.register_forward_hook(lambda mod, args, out: calls.append([a.clone() for a in args]))
    torch.manual_seed(0)
    step = module.forward_step(torch.rand(10, 3, 16, 16) * 2 - 1, torch.arange(10) % 10)
    assert step.group.tolist() == [0] * 4 + [1] * 4 + [2] * 2 and (step.t[:4] == step.t[0]).all()
    assert (
        len(calls) == 1 and probe.asked == 1
    )  # one network call: the batch and the probe's forward, concatenated
    _, parts = module.objective(step)
    assert len(calls) == 1 and probe.asked == 1  # the terms only read the step
    (f,) = step.forwards_by(probe)
    assert step.extra_forwards == [f] and parts["probe"].item() == pytest.approx(
        float(f.eps_hat.detach().square().mean())
    )
    xt, t, y, cond = calls[0]
    assert torch.equal(xt, torch.cat([step.xt, step.xt])) and torch.equal(t, torch.cat([step.t, step.t]))
    assert torch.equal(y, torch.cat([step.y, torch.zeros_like(step.y)]))
    assert torch.equal(cond, torch.cat([step.cond, ~step.cond]))
    with torch.no_grad():  # each row as if alone: the concatenation changes nothing but the call count
        assert torch.allclose(step.eps_hat, module.net(step.xt, step.t, step.y, step.cond), atol=1e-5)
        assert torch.allclose(f.eps_hat, module.net(step.xt, step.t, f.y, f.cond), atol=1e-5)


def test_loss_terms_read_no_optional_attributes() -> None:
    # what a term needs from the step is declared through LossTerm.needs, never discovered with getattr / hasattr
    from pathlib import Path

    import diffrop.losses

    for path in Path(diffrop.losses.__file__).parent.glob("*.py"):
        text = path.read_text()
        assert "getattr(" not in text and "hasattr(" not in text, path.name
