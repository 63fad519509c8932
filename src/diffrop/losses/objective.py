"""The training objective: a named sum of loss terms over one training step (configs/loss/*.yaml)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from diffrop.losses.step import LossTerm, Step, StepNeeds


class Objective:
    """Sums the terms; returns the total and each term's value so every term is logged on its own. ``needs``: what
    each term asks of the training step (``StepNeeds``), read by the module before it runs the network."""

    def __init__(self, terms: Mapping[str, LossTerm]) -> None:
        if not terms:
            raise ValueError("the objective needs at least one loss term (configs/loss/*.yaml: terms: {...})")
        self.terms = dict(terms)
        self.needs: dict[str, StepNeeds] = {}
        for name, term in self.terms.items():
            try:
                needs = term.needs
            except AttributeError:
                needs = None
            if not isinstance(needs, StepNeeds):
                raise TypeError(
                    f"loss.terms.{name}: a loss term declares what it needs from the training step as "
                    "`needs: StepNeeds` (diffrop.losses.step; StepNeeds() for nothing beyond the main forward)"
                )
            self.needs[name] = needs

    @property
    def noise_group_size(self) -> int:
        """How many samples share one (t, eps) in the training step: the largest any term asks for (PCL eq12)."""
        return max(needs.group_size for needs in self.needs.values())

    def __call__(self, step: Step) -> tuple[Tensor, dict[str, Tensor]]:
        parts = {name: term(step) for name, term in self.terms.items()}
        return torch.stack(list(parts.values())).sum(), parts
