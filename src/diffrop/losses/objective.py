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

    @property
    def noise_group_size(self) -> int:
        """How many samples share one (t, eps) in the training step: the largest any term asks for (PCL eq12)."""
        return max(getattr(term, "noise_group_size", 1) for term in self.terms.values())

    def __call__(self, step: Step) -> tuple[Tensor, dict[str, Tensor]]:
        parts = {name: term(step) for name, term in self.terms.items()}
        return torch.stack(list(parts.values())).sum(), parts
