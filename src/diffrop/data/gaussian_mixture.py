"""A class-conditional Gaussian mixture whose diffusion quantities are known in closed form.

Each class c is one Gaussian N(m_c, S_c). Under the forward process x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,
class c's x_t is N(sqrt(abar_t) m_c, A_c) with A_c = abar_t S_c + (1 - abar_t) I, so the Bayes-optimal noise
prediction (the minimiser of the DDPM loss, E[eps | x_t, c]) is

    eps*(x_t, t, c) = -sqrt(1 - abar_t) grad log p_t(x_t | c) = sqrt(1 - abar_t) A_c^-1 (x_t - sqrt(abar_t) m_c),

and the label-dropped (unconditional) branch is the same for the class-frequency-weighted mixture: the
responsibility-weighted average of the eps*_c. The Bayes classifier p(c | x0) uses equal priors (the classes'
geometric overlap, not their frequencies). Everything here is float64; callers cast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class GaussianMixture:
    means: Tensor  # [C, D]
    covs: Tensor  # [C, D, D], symmetric positive definite
    weights: Tensor  # [C] class frequencies of the unconditional branch (sum 1)

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, counts: list[int], generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``counts[c]`` draws of class c -> (x [N, D] float64, labels [N] long), in label order."""
        chol = torch.linalg.cholesky(self.covs)
        xs, ys = [], []
        for c, n in enumerate(counts):
            z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
            xs.append(self.means[c] + z @ chol[c].T)
            ys.append(torch.full((n,), c, dtype=torch.long))
        return torch.cat(xs), torch.cat(ys)

    def sample_class(self, c: int, n: int, generator: torch.Generator | None = None) -> Tensor:
        counts = [0] * self.num_classes
        counts[c] = n
        return self.sample(counts, generator)[0]

    def _eigen(self) -> tuple[Tensor, Tensor]:
        """S_c = Q_c diag(lam_c) Q_c^T: A_c = abar S_c + (1 - abar) I shares Q_c, with eigenvalues abar lam + 1 - abar."""
        lam, q = torch.linalg.eigh(self.covs.double())
        return lam, q  # [C, D], [C, D, D]

    def _whitened(self, xt: Tensor, abar: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(x_t - sqrt(abar) m_c) in each class's eigenbasis [B, C, D], the eigenvalues of A_c [B, C, D], and Q."""
        lam, q = self._eigen()
        a = abar.double()[:, None, None]
        diff = xt.double()[:, None, :] - a.sqrt() * self.means  # [B, C, D]
        z = torch.einsum("bcd,cde->bce", diff, q)
        return z, a * lam + (1 - a), q

    def log_likelihoods(self, xt: Tensor, abar: Tensor) -> Tensor:
        """log N(x_t; sqrt(abar) m_c, A_c) for every class: [B, D], [B] -> [B, C]."""
        z, eig, _ = self._whitened(xt, abar)
        return -0.5 * ((z.square() / eig).sum(-1) + eig.log().sum(-1) + self.dim * math.log(2 * math.pi))

    def eps_star_per_class(self, xt: Tensor, abar: Tensor) -> Tensor:
        """eps*(x_t, t, c) = sqrt(1 - abar) A_c^-1 (x_t - sqrt(abar) m_c) for every class: [B, D], [B] -> [B, C, D]."""
        z, eig, q = self._whitened(xt, abar)
        return (1 - abar.double()).sqrt()[:, None, None] * torch.einsum("bce,cde->bcd", z / eig, q)

    def eps_star(self, xt: Tensor, abar: Tensor, y: Tensor, cond: Tensor) -> Tensor:
        """The Bayes-optimal eps_hat: class y's where ``cond``, the frequency-weighted mixture's elsewhere."""
        per_class = self.eps_star_per_class(xt, abar)  # [B, C, D]
        resp = torch.softmax(self.log_likelihoods(xt, abar) + self.weights.double().log(), dim=1)
        uncond = (resp[..., None] * per_class).sum(1)
        conditional = per_class[torch.arange(len(y)), y]
        return torch.where(cond[:, None], conditional, uncond)

    def bayes_posterior(self, x0: Tensor) -> Tensor:
        """p(c | x0) under equal class priors: [B, D] -> [B, C]."""
        return torch.softmax(self.log_likelihoods(x0, torch.ones(len(x0), dtype=torch.float64)), dim=1)

    def bayes_classify(self, x0: Tensor) -> Tensor:
        return self.bayes_posterior(x0).argmax(1)


class BayesDenoiser:
    """The mixture's eps* behind the network call signature net(x, t, y, cond): the samplers' known-answer net.

    Sampled with it, a sampler shows its own discretisation error, the floor no trained network can go under.
    """

    def __init__(self, mixture: GaussianMixture, alpha_bars: Tensor) -> None:
        self.mixture, self.alpha_bars = mixture, alpha_bars.double()

    def __call__(self, x: Tensor, t: Tensor, y: Tensor, cond: Tensor) -> Tensor:
        abar = self.alpha_bars[t.cpu()]
        eps = self.mixture.eps_star(x.flatten(1).cpu(), abar, y.cpu(), cond.cpu())
        return eps.to(x.dtype).reshape(x.shape).to(x.device)


def plane_mixture(
    plane_means: list[tuple[float, float]],
    plane_covs: list[tuple[tuple[float, float], tuple[float, float]]],
    dim: int,
    off_plane_var: float,
    weights: list[float],
    embedding_seed: int = 0,
) -> GaussianMixture:
    """Classes that live mostly in one 2-D plane of R^dim (a fixed random orthonormal embedding U [dim, 2]):
    m_c = U mu_c, S_c = U Sigma_c U^T + off_plane_var (I - U U^T). The off-plane variance keeps S_c full rank
    and carries no class information (it is the same for every class)."""
    g = torch.Generator().manual_seed(embedding_seed)
    u, _ = torch.linalg.qr(torch.randn(dim, 2, generator=g, dtype=torch.float64))
    off_plane = off_plane_var * (torch.eye(dim, dtype=torch.float64) - u @ u.T)
    means = torch.tensor(plane_means, dtype=torch.float64) @ u.T
    covs = torch.stack([u @ torch.tensor(s, dtype=torch.float64) @ u.T + off_plane for s in plane_covs])
    w = torch.tensor(weights, dtype=torch.float64)
    return GaussianMixture(means, covs, w / w.sum())


# --- closed forms between two Gaussians ------------------------------------------------------------------------


def gaussian_kl(m1: Tensor, s1: Tensor, m2: Tensor, s2: Tensor) -> float:
    """KL(N(m1, s1) || N(m2, s2))."""
    m1, s1, m2, s2 = (v.double() for v in (m1, s1, m2, s2))
    d = m1.numel()
    s2_inv = torch.linalg.inv(s2)
    diff = m2 - m1
    _, logdet1 = torch.linalg.slogdet(s1)
    _, logdet2 = torch.linalg.slogdet(s2)
    return float(0.5 * (torch.trace(s2_inv @ s1) + diff @ s2_inv @ diff - d + logdet2 - logdet1))


def bhattacharyya_coefficient(m1: Tensor, s1: Tensor, m2: Tensor, s2: Tensor) -> float:
    """BC = integral of sqrt(p1 p2) in [0, 1]: 1 = identical, 0 = disjoint; the pairwise Bayes error is <= BC / 2."""
    m1, s1, m2, s2 = (v.double() for v in (m1, s1, m2, s2))
    s = (s1 + s2) / 2
    diff = m1 - m2
    _, logdet = torch.linalg.slogdet(s)
    _, logdet1 = torch.linalg.slogdet(s1)
    _, logdet2 = torch.linalg.slogdet(s2)
    distance = diff @ torch.linalg.solve(s, diff) / 8 + 0.5 * (logdet - 0.5 * (logdet1 + logdet2))
    return float(torch.exp(-distance))
