"""Loss terms against independent expectations: hand values, closed forms and a naive double-loop PCL."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffrop.losses.objective import Objective
from diffrop.losses.pcl import PHI, pairwise_sq_dist, sq_dist
from diffrop.losses.step import Step, StepNeeds
from diffrop.losses.tau import Constant, Cosine, ExpDecay, Linear
from tests.helpers.config_objects import cbdm, eps_mse, linear_schedule, pcl
from tests.helpers.steps import make_step

T = 1000
# phi of DiffROP Sec. 4.2 written out in plain math, independently of the package
PHI_REF = {
    "neg_l2": lambda d, m: -d,
    "hinge": lambda d, m: max(0.0, m - d),
    "recip": lambda d, m: 1.0 / (1.0 + d),
    "exp": lambda d, m: math.exp(-d),
}
COMBOS = [(p, d, r) for p in PHI for d in ("mean", "sum") for r in ("pairs_mean", "algorithm1_sum")]


def naive_pcl(mu, y, t, cond, phi, tau, margin, distance, reduction) -> float:
    """DiffROP Algorithm 1 as a double loop over the batch, in float64."""
    mu = mu.double().flatten(1)
    total, pairs = 0.0, 0
    for i in range(len(y)):
        for j in range(len(y)):
            if y[i] != y[j] and cond[i] and cond[j]:
                d = float((mu[i] - mu[j]).square().sum())
                if distance == "mean":
                    d /= mu.shape[1]
                total += float(tau(torch.tensor(float(t[i]) / T, dtype=torch.float64))) * PHI_REF[phi](
                    d, margin
                )
                pairs += 1
    denom = pairs if reduction == "pairs_mean" else int(cond.sum())
    return total / max(denom, 1)


# ---------------------------------------------------------------- phi and tau


@pytest.mark.parametrize(
    ("phi", "expected"),
    [
        ("neg_l2", [0.0, -0.5, -2.0]),
        ("hinge", [1.0, 0.5, 0.0]),
        ("recip", [1.0, 2 / 3, 1 / 3]),
        ("exp", [1.0, math.exp(-0.5), math.exp(-2.0)]),
    ],
)
def test_phi_hand_values(phi: str, expected: list[float]) -> None:
    d = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)
    assert torch.allclose(PHI[phi](d, 1.0), torch.tensor(expected, dtype=torch.float64), atol=1e-12)


S = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        (Constant(2.0), [2.0, 2.0, 2.0, 2.0]),
        (ExpDecay(2.0, 0.5), [2.0, 2 * math.exp(-0.5), 2 * math.exp(-1.0), 2 * math.exp(-2.0)]),
        (Linear(2.0), [2.0, 1.5, 1.0, 0.0]),
        (Cosine(2.0), [2.0, 2 * math.cos(math.pi / 8), math.sqrt(2.0), 0.0]),
    ],
)
def test_tau_hand_values(schedule, expected: list[float]) -> None:
    assert torch.allclose(schedule(S), torch.tensor(expected, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize(
    ("build", "key"),
    [
        (lambda: Constant(-1.0), "tau.tau0"),
        (lambda: Constant(float("nan")), "tau.tau0"),
        (lambda: ExpDecay(tau0=float("inf"), temperature=0.5), "tau.tau0"),
        (lambda: ExpDecay(1.0, temperature=0.0), "tau.temperature"),
        (lambda: ExpDecay(1.0, temperature=-0.5), "tau.temperature"),
        (lambda: ExpDecay(1.0, temperature=float("nan")), "tau.temperature"),
        (lambda: Linear(-0.1), "tau.tau0"),
        (lambda: Cosine(float("nan")), "tau.tau0"),
    ],
)
def test_tau_rejects_bad_values_naming_the_key(build, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        build()


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"phi": "l1"}, "loss.terms.pcl.phi"),
        ({"weight": -1.0}, "loss.terms.pcl.weight"),
        ({"margin": 0.0}, "loss.terms.pcl.margin"),
        ({"distance": "max"}, "loss.terms.pcl.distance"),
        ({"reduction": "sum"}, "loss.terms.pcl.reduction"),
        ({"pairs": "world"}, "loss.terms.pcl.pairs"),
        ({"pairing": "same_t"}, "loss.terms.pcl.pairing"),
        ({"pairing": "eq12", "group_size": 1}, "loss.terms.pcl.group_size"),
        ({"margin_schedule": "linear"}, "loss.terms.pcl.margin_schedule"),
        ({"pairing": "partner", "partners": 0}, "loss.terms.pcl.partners"),
    ],
)
def test_pcl_rejects_bad_config_naming_the_key(kwargs, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        pcl(**{"phi": "exp", "tau": Constant(1.0), **kwargs})


# ---------------------------------------------------------------- PCL


HAND_MU = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]])  # squared L2: d01 = 2, d02 = 4, d12 = 2
HAND_Y, HAND_T = torch.tensor([0, 1, 1]), torch.tensor([0, 500, 250])  # tau = 1 - t / T: 1, 0.5, 0.75


@pytest.mark.parametrize(("phi", "distance", "reduction"), COMBOS)
def test_pcl_hand_computation(phi: str, distance: str, reduction: str) -> None:
    # different-label ordered pairs (0,1), (1,0), (0,2), (2,0); (1,2) shares a label. Anchor weight tau(t_i):
    # value = (tau_0 + tau_1) phi(d01) + (tau_0 + tau_2) phi(d02) = 1.5 phi(d01) + 1.75 phi(d02)
    d01, d02 = (1.0, 2.0) if distance == "mean" else (2.0, 4.0)  # mean divides by 2 elements
    value = 1.5 * PHI_REF[phi](d01, 1.5) + 1.75 * PHI_REF[phi](d02, 1.5)
    expected = 2.0 * value / (4 if reduction == "pairs_mean" else 3)  # weight 2; 4 pairs | 3 anchors
    term = pcl(
        phi,
        Linear(1.0),
        weight=2.0,
        margin=1.5,
        distance=distance,
        reduction=reduction,
        pairing="batch",
        margin_schedule="constant",
    )
    step = make_step(HAND_Y, HAND_T, mu=HAND_MU)
    assert term(step).item() == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert step.diagnostics["pcl/pairs"].item() == 4


@pytest.mark.parametrize(("phi", "distance", "reduction"), COMBOS)
def test_pcl_matches_naive_double_loop(phi: str, distance: str, reduction: str) -> None:
    g = torch.Generator().manual_seed(0)
    b = 9
    mu = torch.randn(b, 3, 4, 4, generator=g) * 0.7
    y = torch.randint(0, 3, (b,), generator=g)
    t = torch.randint(0, T, (b,), generator=g)
    cond = torch.rand(b, generator=g) > 0.25
    tau = ExpDecay(1.3, 0.4)
    margin = 2.0 if distance == "mean" else 40.0  # keep the hinge active on some pairs
    term = pcl(phi, tau, weight=0.7, margin=margin, distance=distance, reduction=reduction, pairing="batch",
               margin_schedule="constant")  # fmt: skip
    got = term(make_step(y, t, cond, mu=mu)).item()
    expected = 0.7 * naive_pcl(mu, y, t, cond, phi, tau, margin, distance, reduction)
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-6)


def _random_batch(b: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, 2, 3, 3, generator=g),
        torch.randint(0, 3, (b,), generator=g),
        torch.randint(0, T, (b,), generator=g),
        torch.rand(b, generator=g) > 0.3,
    )


@pytest.mark.parametrize("reduction", ["pairs_mean", "algorithm1_sum"])
def test_pcl_is_invariant_to_batch_order(reduction: str) -> None:
    mu, y, t, cond = _random_batch()
    term = pcl("exp", ExpDecay(1.0, 0.5), reduction=reduction, pairing="batch")
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(5))
    a = term(make_step(y, t, cond, mu=mu))
    b = term(make_step(y[perm], t[perm], cond[perm], mu=mu[perm]))
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


@pytest.mark.parametrize("phi", list(PHI))
def test_pcl_ignores_same_label_pairs(phi: str) -> None:
    mu, _, t, _ = _random_batch()
    step = make_step(torch.full((len(t),), 2), t, mu=mu.requires_grad_())
    loss = pcl(phi, Constant(1.0), pairing="batch")(step)
    assert loss.item() == 0.0
    assert step.diagnostics["pcl/pairs"].item() == 0
    loss.backward()
    assert torch.count_nonzero(mu.grad) == 0


@pytest.mark.parametrize("reduction", ["pairs_mean", "algorithm1_sum"])
def test_pcl_excludes_label_dropped_samples(reduction: str) -> None:
    mu, y, t, cond = _random_batch(b=10, seed=3)
    assert 0 < int(cond.sum()) < len(cond)
    term = pcl("recip", Linear(1.0), reduction=reduction, pairing="batch")
    mu = mu.clone().requires_grad_()
    full = term(make_step(y, t, cond, mu=mu))
    kept = term(make_step(y[cond], t[cond], mu=mu.detach()[cond]))
    assert full.item() == pytest.approx(kept.item(), rel=1e-6)
    full.backward()
    assert torch.count_nonzero(mu.grad[~cond]) == 0  # dropped rows get no gradient either


def test_pairwise_sq_dist_equals_cdist_squared() -> None:
    mu = torch.randn(6, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(pairwise_sq_dist(mu), torch.cdist(mu, mu) ** 2, atol=1e-10)


def test_pairwise_sq_dist_gradient_is_finite_at_identical_rows() -> None:
    base = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    mu = torch.cat([base, base[:1]]).requires_grad_()  # rows 0 and 3 identical
    w = torch.rand(4, 4, generator=torch.Generator().manual_seed(1))
    (pairwise_sq_dist(mu) * w).sum().backward()
    assert torch.isfinite(mu.grad).all()
    # cdist's sqrt makes the same gradient NaN-prone: the reason the expansion exists
    ref = mu.detach().clone().requires_grad_()
    ((ref[:, None] - ref[None]).square().sum(-1) * w).sum().backward()
    assert torch.allclose(mu.grad, ref.grad, atol=1e-4)


def test_step_mu_is_the_true_posterior_mean_when_eps_hat_is_eps() -> None:
    """Eq. 9 with the true noise equals q(x_{t-1} | x_t, x0)'s mean (Ho et al. 2020 Eq. 7)."""
    g = torch.Generator().manual_seed(0)
    sched = linear_schedule(T)
    t = torch.tensor([0, 1, 10, 500, 999])
    x0, eps = torch.randn(5, 3, 2, 2, generator=g), torch.randn(5, 3, 2, 2, generator=g)
    xt = sched.q_sample(x0, t, eps)
    step = make_step(
        t % 2, t, x0=x0, xt=xt, eps=eps, eps_hat=eps, schedule=sched, class_freq=torch.ones(2) / 2
    )
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    c0 = (abar_prev.sqrt() * betas / (1 - abar))[t].view(-1, 1, 1, 1)
    ct = ((1 - betas).sqrt() * (1 - abar_prev) / (1 - abar))[t].view(-1, 1, 1, 1)
    assert torch.allclose(step.mu.double(), c0 * x0.double() + ct * xt.double(), atol=2e-4)


# ---------------------------------------------------------------- DDPM


def test_eps_mse_equals_mse_loss() -> None:
    g = torch.Generator().manual_seed(0)
    eps, eps_hat = torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 3, 5, 5, generator=g)
    step = make_step([0, 1, 2, 0], eps=eps, eps_hat=eps_hat, shape=(3, 5, 5))
    assert eps_mse()(step).item() == pytest.approx(F.mse_loss(eps_hat, eps).item(), rel=1e-6)
    assert eps_mse(weight=3.0)(step).item() == pytest.approx(3 * F.mse_loss(eps_hat, eps).item(), rel=1e-6)


def test_eps_mse_reweight_hand_computed() -> None:
    freq = torch.tensor([0.75, 0.25])
    eps = torch.zeros(2, 1, 1, 2)
    eps_hat = torch.tensor([[[[1.0, 1.0]]], [[[2.0, 0.0]]]])  # per-sample mse 1 and 2
    step = make_step([0, 1], eps=eps, eps_hat=eps_hat, class_freq=freq, shape=(1, 1, 2))
    # weights 1 / (C p_y): 1 / 1.5 and 1 / 0.5
    expected = (1.0 / 1.5 + 2.0 / 0.5) / 2
    assert eps_mse(reweight=True)(step).item() == pytest.approx(expected, rel=1e-6)


def test_eps_mse_reweight_has_mean_one_under_the_class_frequencies() -> None:
    freq = torch.tensor([0.6, 0.25, 0.1, 0.05])
    weights = []
    for c in range(4):  # unit error on one sample of class c: the term returns that class's weight
        step = make_step([c], eps=torch.zeros(1, 1, 1, 1), eps_hat=torch.ones(1, 1, 1, 1), class_freq=freq)
        weights.append(eps_mse(reweight=True)(step))
    assert float((torch.stack(weights) * freq).sum()) == pytest.approx(1.0, rel=1e-6)


# ---------------------------------------------------------------- CBDM


class TinyNet(nn.Module):
    """eps(x, t, y) = a x + emb[y] (per channel); counts its calls; ``use_cond`` zeroes dropped labels."""

    def __init__(self, use_cond: bool = True) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.5))
        self.emb = nn.Parameter(torch.tensor([[1.0, -1.0], [0.5, 2.0], [-1.0, 0.0]]))  # [classes, channels]
        self.use_cond, self.calls, self.seen_y = use_cond, 0, []

    def forward(self, x: Tensor, t: Tensor, y: Tensor, cond: Tensor) -> Tensor:
        self.calls += 1
        self.seen_y.append(y.clone())
        e = self.emb[y] * (cond[:, None] if self.use_cond else 1.0)
        return self.a * x + e[:, :, None, None]


def cbdm_step(net: TinyNet, term, y, t, cond=None, class_freq=(0.0, 0.0, 1.0), all_dropped=False) -> Step:
    g = torch.Generator().manual_seed(0)
    y, t = torch.tensor(y), torch.tensor(t)
    cond = torch.ones(len(y), dtype=torch.bool) if cond is None else torch.tensor(cond)
    xt = torch.randn(len(y), 2, 3, 3, generator=g)
    eps_hat = net(xt, t, y, cond)  # the step's one forward, with its graph
    return make_step(y, t, cond, xt=xt, net=net, eps_hat=eps_hat, class_freq=torch.tensor(class_freq),
                     terms=[term], all_dropped=all_dropped)  # fmt: skip


def test_cbdm_hand_computation() -> None:
    # class_freq one-hot on class 2 makes y' = 2 for every sample, so the expectation is deterministic.
    net = TinyNet()
    y, t = [0, 1, 0], [100, 500, 999]
    term = cbdm(weight=2.0, gamma=0.25)
    loss = term(cbdm_step(net, term, y, t))
    assert net.calls == 2 and net.seen_y[1].tolist() == [2, 2, 2]
    emb = net.emb.detach()
    # eps(y) - eps(y') = emb[y] - emb[2] (a x cancels); mse = mean over channels of its square
    mse = [float((emb[c] - emb[2]).square().mean()) for c in y]
    w = [2.0 * ti / T for ti in t]
    expected = sum(wi * (1 + 0.25) * m for wi, m in zip(w, mse, strict=True)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 0.25, 1.0])
def test_cbdm_stop_gradients(gamma: float) -> None:
    """reg = w mse(eps(y), sg(eps(y'))) reaches the net through eps(y) only, commit = gamma w mse(sg(eps(y)), eps(y'))
    through eps(y') only. Without stop-gradients a x would cancel in eps(y) - eps(y') and ``a`` get no gradient;
    with them it gets (1 - gamma) times the reg part's."""
    net = TinyNet()
    y, t = [0, 1, 1], [200, 400, 800]
    term = cbdm(weight=1.0, gamma=gamma)
    step = cbdm_step(net, term, y, t)
    term(step).backward()
    emb, xt = net.emb.detach(), step.xt
    w = torch.tensor(t, dtype=torch.float32) / T
    grad_emb, grad_a = torch.zeros_like(emb), torch.tensor(0.0)
    for i, c in enumerate(y):  # per sample: w_i mean_{k,h,w} (eps_i(y) - eps_i(y'))^2 / B, B = 3, 2 channels
        diff = emb[c] - emb[2]  # [2] per channel
        grad_emb[c] += w[i] * 2 * diff / 2 / 3  # reg, through eps(y)
        grad_emb[2] -= gamma * w[i] * 2 * diff / 2 / 3  # commitment, through eps(y')
        grad_a += (1 - gamma) * w[i] * (2 * diff[:, None, None] * xt[i]).mean() / 3  # x enters both with sign
    assert torch.allclose(net.emb.grad, grad_emb, atol=1e-6)
    assert net.a.grad.item() == pytest.approx(grad_a.item(), abs=1e-6)
    if gamma == 0:
        assert (
            torch.count_nonzero(net.emb.grad[2]) == 0
        )  # nothing flows through eps(y') without the commitment


def test_cbdm_skips_all_dropped_batches_without_a_forward() -> None:
    net = TinyNet()
    term = cbdm()
    step = cbdm_step(net, term, [0, 1], [300, 600], cond=[False, False], all_dropped=True)
    loss = term(step)
    assert loss.item() == 0.0 and net.calls == 1 and step.extra_forwards == []  # the step's forward only


def test_cbdm_dropped_samples_contribute_zero() -> None:
    net = TinyNet(use_cond=False)  # the net ignores cond, so only the term's own mask can zero sample 1
    y, t = [0, 1, 0], [300, 600, 900]
    term = cbdm(weight=1.0, gamma=0.5)
    loss = term(cbdm_step(net, term, y, t, cond=[True, False, True]))
    emb = net.emb.detach()
    kept = [0, 2]
    expected = sum(t[i] / T * 1.5 * float((emb[y[i]] - emb[2]).square().mean()) for i in kept) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("y_prime", "freq"), [("train_freq", [0.7, 0.2, 0.1]), ("uniform", [0.7, 0.2, 0.1])])
def test_cbdm_draws_y_prime_from_the_configured_distribution(y_prime: str, freq: list[float]) -> None:
    torch.manual_seed(0)
    net = TinyNet()
    n = 20_000
    term = cbdm(y_prime=y_prime)
    term(cbdm_step(net, term, [0] * n, [500] * n, class_freq=freq))
    counts = torch.bincount(net.seen_y[1], minlength=3).float() / n
    target = torch.tensor(freq) if y_prime == "train_freq" else torch.full((3,), 1 / 3)
    assert torch.allclose(counts, target, atol=0.02)


def test_cbdm_rejects_bad_config() -> None:
    for kwargs, key in [
        ({"weight": -1.0}, "weight"),
        ({"gamma": float("nan")}, "gamma"),
        ({"y_prime": "x"}, "y_prime"),
    ]:
        with pytest.raises(ValueError, match=f"loss.terms.cbdm.{key}"):
            cbdm(**kwargs)


# ---------------------------------------------------------------- Objective


class Const:
    """A loss term of a fixed value that needs nothing beyond the main forward."""

    needs = StepNeeds()

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self, step: Step) -> torch.Tensor:
        return torch.tensor(self.value)


def test_objective_sums_terms_and_returns_each_part() -> None:
    step = make_step([0, 1])
    obj = Objective({"a": Const(1.5), "b": Const(-0.25), "c": Const(2.0)})
    total, parts = obj(step)
    assert total.item() == pytest.approx(3.25)
    assert {k: v.item() for k, v in parts.items()} == {"a": 1.5, "b": -0.25, "c": 2.0}


def test_objective_refuses_a_term_that_does_not_declare_its_needs() -> None:
    # what a term asks of the step is part of the LossTerm protocol, not an optional attribute read by getattr
    with pytest.raises(TypeError, match=r"loss.terms.a: .*needs: StepNeeds"):
        Objective({"a": lambda s: torch.tensor(1.5)})


def test_objective_with_real_terms_and_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(4, 1, 2, 2, generator=g)
    eps_hat = torch.randn(4, 1, 2, 2, generator=g).requires_grad_()
    step = make_step([0, 1, 2, 0], t=[10, 20, 30, 40], eps=eps, eps_hat=eps_hat)
    terms = {"ddpm": eps_mse(), "pcl": pcl("exp", Constant(1.0), pairing="batch")}
    total, parts = Objective(terms)(step)
    assert set(parts) == {"ddpm", "pcl"}
    assert total.item() == pytest.approx(sum(p.item() for p in parts.values()), rel=1e-6)
    total.backward()
    assert torch.isfinite(eps_hat.grad).all() and eps_hat.grad.abs().sum() > 0


def test_objective_needs_a_term() -> None:
    with pytest.raises(ValueError, match="at least one loss term"):
        Objective({})


def test_pairwise_distance_keeps_fp32_under_bf16_autocast():
    """Near pairs are the ones PCL targets; a bf16 matmul would round their distance to zero."""
    torch.manual_seed(0)
    a = torch.randn(1, 3072)
    mu = torch.cat([a, a + 0.02 * torch.randn(1, 3072)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = pairwise_sq_dist(mu)
    expected = (mu[0] - mu[1]).square().sum()
    assert d.dtype == torch.float32
    assert torch.allclose(d[0, 1], expected, rtol=1e-3)


def test_pair_distance_from_differences_keeps_fp32_under_bf16_autocast_and_a_zero_gradient_at_d_0():
    torch.manual_seed(0)
    a = torch.randn(2, 3072).bfloat16()
    b = a + 0.02 * torch.randn(2, 3072).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = sq_dist(a, b)
    assert d.dtype == torch.float32
    assert torch.allclose(d, (a.double() - b.double()).square().sum(1).float(), rtol=1e-6)
    same = torch.randn(3, 5, requires_grad=True)
    sq_dist(same, same.detach().clone()).sum().backward()
    assert torch.equal(same.grad, torch.zeros(3, 5))
