"""The training objective: a named sum of loss terms over one forward pass (configs/loss/*.yaml)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from diffrop.losses.step import LossTerm, Step


class Objective:
    """Sums the terms; returns the total and each term's value so every term is logged on its own."""

    def __init__(self, terms: Mapping[str, LossTerm]) -> None:
        if not terms:
            raise ValueError("the objective needs at least one loss term (configs/loss/*.yaml: terms: {...})")
        self.terms = dict(terms)

    def __call__(self, step: Step) -> tuple[Tensor, dict[str, Tensor]]:
        parts = {name: term(step) for name, term in self.terms.items()}
        return torch.stack(list(parts.values())).sum(), parts
