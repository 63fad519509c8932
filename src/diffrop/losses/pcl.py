"""Probabilistic contrastive learning (PCL), DiffROP Sec. 4, Eq. 12 and Algorithm 1.

For every pair (i, j) with different labels, add tau(t) * phi(d_ij), where d_ij is the squared distance between
the posterior means mu_i and mu_j of DiffROP Eq. 9, taken from the same forward pass as the DDPM loss under ``eq12``:
no extra network evaluation, and d is computed only for the pairs that exist (inside a group).

pairing ``eq12`` (the paper's): i and j were noised at the same t with the same eps (the training step draws them
once per group of ``group_size`` samples, ``diffrop.diffusion.noising``) and only pairs inside a group count, so
x_t^i - x_t^j = sqrt(abar_t) (x_0^i - x_0^j) and d_ij measures the images, not the noise. ``batch``: every pair
of the batch, each sample at its own t and eps (d_ij then mostly measures the two noises; kept for comparison,
docs/design.md section 4). ``partner`` (Eq. 12 by one extra forward) and ``same_xt`` (beyond the paper: two labels'
denoisers at one x_t, the overlap of the conditional models themselves) are described in ``PCL._partner_forwards``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from diffrop.losses.step import Forward, Step, StepNeeds, no_forwards

# phi(d, margin) of paper Sec. 4.2 / Table 5.
PHI: dict[str, Callable[[Tensor, float | Tensor], Tensor]] = {
    "neg_l2": lambda d, margin: -d,  # the naive form: moves the optimum (Fig. 2), worse FID
    "hinge": lambda d, margin: (margin - d).clamp_min(0),  # max-margin
    "recip": lambda d, margin: 1 / (1 + d),  # hinge-like, reciprocal (Algorithm 1)
    "exp": lambda d, margin: torch.exp(-d),  # hinge-like, exponential (best in Table 5)
}
DISTANCES = ("mean", "sum")
REDUCTIONS = ("pairs_mean", "algorithm1_sum")
PAIRS = ("local", "global")
PAIRINGS = ("eq12", "partner", "same_xt", "batch")
MARGIN_SCHEDULES = ("constant", "abar", "data")
PUSHES = ("both", "rarer")


def _choice(name: str, value: str, options) -> str:
    if value not in options:
        raise ValueError(f"loss.terms.pcl.{name}={value!r} is not one of {list(options)}")
    return value


def _at_least_float32(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def pairwise_sq_dist(mu: Tensor) -> Tensor:
    """Squared L2 distances of the rows of ``mu`` [N, D] -> [N, N], as one matrix product (``batch`` pairing).

    The |a|^2 + |b|^2 - 2 a.b expansion is a small difference of large norms: fine for ``batch`` pairs, whose d
    is dominated by the two noises, but not for Eq. 12 pairs (use ``sq_dist`` on the pairs that exist).
    """
    with torch.autocast(mu.device.type, enabled=False):  # a bf16 matmul would collapse near pairs to d = 0
        mu = _at_least_float32(mu)
        sq = mu.square().sum(1)
        return (sq[:, None] + sq[None, :] - 2 * mu @ mu.T).clamp_min(0)


def sq_dist(a: Tensor, b: Tensor) -> Tensor:
    """|a - b|^2 summed over the last dimension, from the difference itself, in at least float32 whatever the
    autocast: exact to the rounding of a - b, so Eq. 12's small d (noise cancelled) does not depend on the BLAS
    kernel, and its gradient 2 (a - b) is finite (zero) at d = 0."""
    with torch.autocast(a.device.type, enabled=False):
        return (_at_least_float32(a) - _at_least_float32(b)).square().sum(-1)


def group_neighbours(n: int, group_size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """For samples in consecutive groups of at most ``group_size`` (``draw_noise``), every j that can share i's
    group: j = i + k for 0 < |k| < group_size. Returns j [n, 2 (group_size - 1)] (clamped into range) and the mask
    of the j that exist; the caller still checks that i and j share a group (the last one may be short)."""
    k = torch.arange(1, group_size, device=device)
    j = torch.arange(n, device=device)[:, None] + torch.cat([-k.flip(0), k])
    return j.clamp(0, n - 1), (j >= 0) & (j < n)


class PCL:
    """tau(t_i) * phi(d_ij) over pairs with different labels; label-dropped samples take no part.

    distance: ``mean`` divides d by the number of pixels (a plain sum over 3072 pixels makes exp(-d) and 1/(1+d)
    vanish); ``sum`` is the literal squared L2. reduction: ``pairs_mean`` averages over valid pairs,
    ``algorithm1_sum`` sums over j for each anchor i and averages over anchors (Algorithm 1, line 6).
    pairs: ``global`` gathers mu, labels, t and groups from all DDP ranks with gradients (groups never span
    ranks). margin_schedule (hinge): ``constant``; ``abar``: margin * abar_{t-1}, the scale of
    |mu_i - mu_j|^2 = abar_{t-1} |x_0^i - x_0^j|^2 under eq12 with an exact denoiser (the paper's D_t / mu_t
    depends on t); ``data``: that times the batch's mean per-value squared distance between different-label
    images, so ``margin`` is a fraction of the typical between-class distance and a pair already further apart
    rests (p_theta = q stays the optimum, Eq. 15). partners (``partner``, ``same_xt``): m partners per anchor,
    one extra forward each (asked for through ``needs``, run by the training step).
    """

    def __init__(
        self,
        phi: str,
        tau: Callable[[Tensor], Tensor],
        weight: float,
        margin: float,
        distance: str,
        reduction: str,
        pairs: str,
        pairing: str,
        group_size: int,
        margin_schedule: str,
        partners: int,
        push: str,
    ) -> None:
        self.phi = _choice("phi", phi, PHI)
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"loss.terms.pcl.weight must be a finite number >= 0, got {weight!r}")
        if not math.isfinite(margin) or margin <= 0:
            raise ValueError(f"loss.terms.pcl.margin must be a finite number > 0, got {margin!r}")
        self.tau, self.weight, self.margin = tau, weight, margin
        self.distance = _choice("distance", distance, DISTANCES)
        self.reduction = _choice("reduction", reduction, REDUCTIONS)
        self.pairs = _choice("pairs", pairs, PAIRS)
        self.pairing = _choice("pairing", pairing, PAIRINGS)
        self.margin_schedule = _choice("margin_schedule", margin_schedule, MARGIN_SCHEDULES)
        if pairing == "eq12" and (not isinstance(group_size, int) or group_size < 2):
            raise ValueError(
                f"loss.terms.pcl.group_size must be an integer >= 2 with pairing=eq12 (pairs live inside a group "
                f"that shares t and eps), got {group_size!r}"
            )
        if pairing in ("partner", "same_xt") and pairs == "global":
            raise ValueError(
                f"loss.terms.pcl.pairing={pairing} draws each anchor's partner from the device's own batch: "
                "use pairs=local with it"
            )
        if not isinstance(partners, int) or partners < 1:
            raise ValueError(f"loss.terms.pcl.partners must be an integer >= 1, got {partners!r}")
        self.group_size, self.partners = group_size, partners
        self.push = _choice("push", push, PUSHES)
        if push == "rarer" and pairing == "batch":
            raise ValueError(
                "loss.terms.pcl.push=rarer needs the pairs' distances one by one: not with pairing=batch"
            )
        partnered = pairing in ("partner", "same_xt")
        self.needs = StepNeeds(  # eq12: (t, eps) drawn once per group; partner / same_xt: m extra forwards
            group_size=group_size if pairing == "eq12" else 1,
            forwards=self._partner_forwards if partnered else no_forwards,
        )

    def __call__(self, step: Step) -> Tensor:
        if self.pairing in ("partner", "same_xt"):
            d, pair, t, anchors, weight, num_pairs = self._partner_pairs(step)
        else:
            d, pair, t, anchors = self._batch_pairs(step)
            weight, num_pairs = 1.0, pair.sum()
        if self.distance == "mean":
            d = d / step.mu[0].numel()
        tau = self.tau(
            t.float() / step.schedule.num_steps
        )  # tau(t_i) of anchor i (= t_j under eq12, partner)
        value = torch.where(pair, weight * tau * PHI[self.phi](d, self._margin(step, t)), 0.0)
        step.diagnostics["pcl/pairs"] = pair.expand_as(d).sum().float()
        # pairs_mean: the mean over the batch's valid pairs; algorithm1_sum: per-anchor sum over its partners,
        # mean over the anchors (every conditioned sample). Under partner / same_xt ``value`` carries K_i / m.
        denominator = num_pairs if self.reduction == "pairs_mean" else anchors.sum()
        return self.weight * value.sum() / denominator.clamp_min(1)

    def _margin(self, step: Step, t: Tensor) -> float | Tensor:
        """The hinge's margin at each anchor's t: ``constant``; ``abar``: margin * abar_{t-1}; ``data``: also times
        the batch's mean per-value |x_0^i - x_0^j|^2 over different-label pairs, so d of Eq. 12 pairs with an exact
        denoiser (abar_{t-1} |x_0^i - x_0^j|^2 / D) is on the margin's scale whatever the data's range."""
        if self.phi != "hinge" or self.margin_schedule == "constant":
            return self.margin
        margin = self.margin * step.schedule.alpha_bars_prev[t]
        if self.margin_schedule == "data":
            with torch.no_grad():
                x0 = step.x0.flatten(1)
                between = (step.y[:, None] != step.y[None, :]) & step.cond[:, None] & step.cond[None, :]
                d0 = pairwise_sq_dist(x0) / x0.shape[1]  # large distances: the expansion is accurate here
                margin = margin * (torch.where(between, d0, 0.0).sum() / between.sum().clamp_min(1))
        return margin

    def _batch_pairs(self, step: Step) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Squared distances of each anchor i to its candidates j, the valid-pair mask, each row's t broadcast to
        them, and the conditioned samples [N] (the anchors). ``eq12``: the j of i's group ([N, 2 (G - 1)], each d
        from mu_i - mu_j); ``batch``: every j of the batch ([N, N])."""
        mu, y, t, ok = step.mu.flatten(1), step.y, step.t, step.cond
        if self.pairing == "eq12" and step.group is None:
            raise ValueError(
                "loss.terms.pcl.pairing=eq12 needs a step whose samples share t and eps in groups "
                "(diffrop.diffusion.noising.draw_noise with group_size >= 2)"
            )
        group = step.group if self.pairing == "eq12" else None
        if self.pairs == "global":
            mu, y, t, ok = (step.gather(v) for v in (mu, y, t, ok))
            if group is not None:  # rank r's groups become r * B + g: pairs never cross ranks
                b = step.group.shape[0]
                group = step.gather(group) + torch.arange(len(y), device=y.device) // b * b
        if group is None:
            pair = (y[:, None] != y[None, :]) & ok[:, None] & ok[None, :]  # [N, N]
            return pairwise_sq_dist(mu), pair, t[:, None], ok
        j, exists = group_neighbours(len(y), self.group_size, y.device)
        pair = exists & (group[j] == group[:, None]) & (y[j] != y[:, None]) & ok[j] & ok[:, None]
        return self._dist(mu[:, None], mu[j], y[:, None], y[j], step.class_freq), pair, t[:, None], ok

    def _dist(self, mu_i: Tensor, mu_j: Tensor, y_i: Tensor, y_j: Tensor, freq: Tensor) -> Tensor:
        """sq_dist of the pairs; ``push: rarer`` (beyond the paper) stops the gradient on the member of the more
        frequent class (by the training label frequencies), so only the rarer class's output moves."""
        if self.push == "rarer":
            f_i, f_j = freq[y_i][..., None], freq[y_j][..., None]
            mu_i = torch.where(f_i > f_j, mu_i.detach(), mu_i)
            mu_j = torch.where(f_j > f_i, mu_j.detach(), mu_j)
        return sq_dist(mu_i, mu_j)

    def _partner_forwards(self, step: Step) -> list[Forward]:
        """``partners`` (m) different-label partners j per anchor i, drawn uniformly with replacement from the
        anchor's K_i different-label conditioned batch members, each compared in one extra forward of the batch
        (DiffAugment parameters stay per anchor); the DDPM loss keeps independent draws.

        ``partner``: image x_0^j noised with the anchor's own t_i and eps_i (Eq. 12 exactly), denoised under y_j.
        ``same_xt``: the anchor's own x_t^i denoised under y_j, so mu_i - mu_j = -coef (eps(x_t, y_i) - eps(x_t, y_j))
        measures how far the two class-conditional denoisers disagree at one point (CBDM compares them the same way).
        """
        y, t, ok = step.y, step.t, step.cond
        candidates, has_partner = self._candidates(step)
        weights = torch.where(has_partner[:, None], candidates.float(), 1.0)  # a row with none: any j, masked
        j = torch.multinomial(weights, self.partners, replacement=True)  # [B, m]
        forwards = []
        for jk in j.unbind(1):  # m forwards of the batch
            if self.pairing == "same_xt":
                xt_j, eps_j = step.xt, None
            else:  # x_t^j - x_t^i = sqrt(abar_t) (x_0^j - x_0^i): a DDPM sample of x_0^j at (t_i, eps_i)
                xt_j, eps_j = step.schedule.q_sample(step.x0[jk], t, step.eps), step.eps
            forwards.append(Forward(xt=xt_j, t=t, y=y[jk], cond=torch.ones_like(ok), eps=eps_j, by=self))
        return forwards

    @staticmethod
    def _candidates(step: Step) -> tuple[Tensor, Tensor]:
        """[B, B]: j may partner i (another label, conditioned); [B]: the conditioned anchors with a partner."""
        candidates = (step.y[:, None] != step.y[None, :]) & step.cond[None, :]
        return candidates, (candidates.sum(1) > 0) & step.cond

    def _partner_pairs(self, step: Step) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The pairs of the partner forwards (``_partner_forwards``). Each drawn pair carries the weight K_i / m, so
        sum_k K_i / m phi(d_ij_k) is an unbiased estimate of Algorithm 1's per-anchor sum over all K_i partners
        (``algorithm1_sum``), and that sum over the anchors divided by sum_i K_i of the mean over the batch's valid
        pairs (``pairs_mean``). Returns d [B, m], the mask of anchors that found a partner, t [B, 1], the anchors
        [B], the weights [B, 1] and the number of valid pairs."""
        y, t, ok = step.y, step.t, step.cond
        forwards = step.forwards_by(self, expected=self.partners)
        candidates, has_partner = self._candidates(step)
        count = candidates.sum(1)  # K_i
        mu = step.mu.flatten(1)
        d = [
            self._dist(
                mu, step.schedule.posterior_mean(f.xt, t, f.eps_hat).flatten(1), y, f.y, step.class_freq
            )
            for f in forwards
        ]
        weight = (count.float() / self.partners)[:, None]
        num_pairs = torch.where(has_partner, count, 0).sum()
        return torch.stack(d, 1), has_partner[:, None], t[:, None], ok, weight, num_pairs
