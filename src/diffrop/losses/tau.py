"""tau(t): the PCL weight per anchor sample, decreasing in t (more class overlap is expected at high noise).

Every schedule maps s = t / T in [0, 1) to a weight. The paper names a "temperature-controlled exponential decay
w.r.t. timestep" without constants (Sec. 4.2); the constants here are ours and live in ``configs/tau/``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _check(name: str, value: float, positive: bool = False) -> float:
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        need = "> 0" if positive else ">= 0"
        raise ValueError(f"tau.{name} must be a finite number {need}, got {value!r}")
    return float(value)


class Constant:
    """tau(s) = tau0 (the time-independent ablation of Fig. 4a)."""

    def __init__(self, tau0: float) -> None:
        self.tau0 = _check("tau0", tau0)

    def __call__(self, s: Tensor) -> Tensor:
        return torch.full_like(s, self.tau0)


class ExpDecay:
    """tau(s) = tau0 * exp(-s / temperature)."""

    def __init__(self, tau0: float, temperature: float) -> None:
        self.tau0 = _check("tau0", tau0)
        self.temperature = _check("temperature", temperature, positive=True)

    def __call__(self, s: Tensor) -> Tensor:
        return self.tau0 * torch.exp(-s / self.temperature)


class Linear:
    """tau(s) = tau0 * (1 - s): full weight at t = 0, zero at t = T."""

    def __init__(self, tau0: float) -> None:
        self.tau0 = _check("tau0", tau0)

    def __call__(self, s: Tensor) -> Tensor:
        return self.tau0 * (1 - s)


class Cosine:
    """tau(s) = tau0 * cos(pi s / 2): flat near t = 0, falling to zero at t = T."""

    def __init__(self, tau0: float) -> None:
        self.tau0 = _check("tau0", tau0)

    def __call__(self, s: Tensor) -> Tensor:
        return self.tau0 * torch.cos(0.5 * math.pi * s)
