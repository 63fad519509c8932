"""The known-answer scores of a network on the Gaussian mixture of ``data=gaussian_lt``
(diffrop.data.gaussian_mixture), where eps*, the class distributions and the Bayes classifier are closed forms:
eps error and slope on fresh held-out x_t, and the leakage, KL and Bhattacharyya excess of generated samples.
Shared by experiments/overlap_bench.py and experiments/ddp_streams.py."""

from __future__ import annotations

import numpy as np
import torch

from diffrop.diffusion import samplers
from diffrop.diffusion.samplers import loop

T_GRID = (10, 50, 100, 200, 300, 500, 700, 900)  # held-out timesteps of eps_err and slope
HEAD, TAIL = 0, 3  # the overlapping pair of configs/data/gaussian_lt.yaml


@torch.no_grad()
def eps_scores(net, schedule, mixture, seed: int, per_class: int) -> dict:
    """eps_err and slope on fresh held-out draws (the same for every arm of a seed), per t and overall."""
    gen = torch.Generator().manual_seed(2000 + seed)
    x0, y = mixture.sample([per_class] * mixture.num_classes, gen)
    per_t = {"eps_err": [], "eps_err_tail": [], "slope": [], "slope_bayes": [], "bayes_residual": []}
    for t_value in T_GRID:
        eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        abar = schedule.alpha_bars.double()[t_value].expand(len(y))
        xt = abar.sqrt()[:, None] * x0 + (1 - abar).sqrt()[:, None] * eps
        star = mixture.eps_star(xt, abar, y, torch.ones_like(y, dtype=torch.bool))
        t = torch.full_like(y, t_value)
        cond = torch.ones_like(y, dtype=torch.bool)
        eps_hat = net(xt.float()[:, :, None, None], t, y, cond).flatten(1).double()
        err = (eps_hat - star).square().mean(1)
        per_t["eps_err"].append(float(err.mean()))
        per_t["eps_err_tail"].append(float(err[y == TAIL].mean()))
        per_t["slope"].append(float((eps_hat * eps).sum() / eps.square().sum()))
        per_t["slope_bayes"].append(float((star * eps).sum() / eps.square().sum()))
        per_t["bayes_residual"].append(float((star - eps).square().mean()))
    return {"per_t": per_t} | {k: float(np.mean(v)) for k, v in per_t.items()}


def head_share(mixture, x: torch.Tensor) -> float:
    return float((mixture.bayes_classify(x) == HEAD).double().mean())


def true_head_shares(mixture, n: int) -> list[float]:
    """Share of true class-c draws the Bayes classifier assigns to the head (Monte-Carlo, fixed seed)."""
    gen = torch.Generator().manual_seed(12345)
    return [head_share(mixture, mixture.sample_class(c, n, gen)) for c in range(mixture.num_classes)]


def sample_scores(net, schedule, mixture, seed: int, args, guidance: float, truth) -> dict:
    """leakage, kl and bc_excess of ``args.per_class`` samples per class (noise seeded by the run seed)."""
    from diffrop.data.gaussian_mixture import bhattacharyya_coefficient, gaussian_kl

    y = torch.arange(mixture.num_classes).repeat_interleave(args.per_class)
    gen = torch.Generator().manual_seed(1000 + seed)  # the same noise for every arm of this seed
    shape = (len(y), mixture.dim, 1, 1)
    x = loop.run(samplers.get(args.sampler), net, schedule, y, shape, args.sample_steps, 0.0, guidance, gen)
    x = x.flatten(1).double()
    fits = [(x[y == c].mean(0), torch.cov(x[y == c].T)) for c in range(mixture.num_classes)]
    kl = [gaussian_kl(m, s, mixture.means[c], mixture.covs[c]) for c, (m, s) in enumerate(fits)]
    leakage = [head_share(mixture, x[y == c]) - truth[c] for c in range(mixture.num_classes)]
    bc_true = bhattacharyya_coefficient(
        mixture.means[HEAD], mixture.covs[HEAD], mixture.means[TAIL], mixture.covs[TAIL]
    )
    bc_gen = bhattacharyya_coefficient(*fits[HEAD], *fits[TAIL])
    return {
        "leakage_tail": leakage[TAIL],
        "leakage": leakage,
        "kl_tail": kl[TAIL],
        "kl_mean": float(np.mean(kl)),
        "kl": kl,
        "bc_excess": bc_gen - bc_true,
        "clamped": float((x.abs() >= 1).any(1).double().mean()),  # the sampler clips to [-1, 1]
    }


def score_net(net, schedule, mixture, seed: int, args, truth) -> dict:
    out = {"eps": eps_scores(net, schedule, mixture, seed, args.eval_per_class)}
    for w in args.guidance:
        out[f"w{w:g}"] = sample_scores(net, schedule, mixture, seed, args, w, truth)
    return out


def flat_scores(result: dict, guidance: list[float]) -> dict[str, float]:
    """One run's scalar scores under the metric names of the table (``leakage_tail@w0``, ...)."""
    out = {k: result["eps"][k] for k in ("eps_err", "eps_err_tail", "slope")}
    train = result.get("train", {})
    if "grad_ratio" in train:
        out["grad_ratio"] = train["grad_ratio"]
    if "eps_slope" in train:  # train/eps_slope on training batches (median, second half)
        out["train_eps_slope"] = train["eps_slope"]
    for w in guidance:
        for k in ("leakage_tail", "kl_tail", "kl_mean", "bc_excess"):
            out[f"{k}@w{w:g}"] = result[f"w{w:g}"][k]
    return out


def known_facts(mixture, n: int) -> dict:
    """The mixture's closed-form facts (Monte-Carlo with ``n`` draws per class, fixed seeds): the head-tail Bayes
    error (equal priors), their true Bhattacharyya coefficient, and the Bayes classifier's head share per class."""
    from diffrop.data.gaussian_mixture import bhattacharyya_coefficient

    gen = torch.Generator().manual_seed(54321)
    errors = []
    for c, other in ((HEAD, TAIL), (TAIL, HEAD)):
        x = mixture.sample_class(c, n, gen)
        ll = mixture.log_likelihoods(x, torch.ones(n, dtype=torch.float64))
        errors.append(float((ll[:, other] > ll[:, c]).double().mean()))
    m = mixture
    return {
        "pairwise_bayes_error": float(np.mean(errors)),
        "bc_true": bhattacharyya_coefficient(m.means[HEAD], m.covs[HEAD], m.means[TAIL], m.covs[TAIL]),
        "true_head_share": true_head_shares(m, n),
    }
