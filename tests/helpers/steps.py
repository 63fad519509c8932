"""One way for tests to build a loss ``Step`` around chosen tensors: no network call but the extra forwards the
given terms ask for, made as ``DiffusionModule.forward_step`` makes them."""

from __future__ import annotations

import torch
from torch import Tensor

from diffrop.diffusion.schedule import NoiseSchedule
from diffrop.losses.step import Step
from tests.helpers.config_objects import linear_schedule


def make_step(
    y,
    t=None,
    cond=None,
    *,
    mu: Tensor | None = None,
    x0: Tensor | None = None,
    xt: Tensor | None = None,
    eps: Tensor | None = None,
    eps_hat: Tensor | None = None,
    group: Tensor | None = None,
    group_size: int = 1,
    schedule: NoiseSchedule | None = None,
    class_freq: Tensor | None = None,
    net=None,
    terms=(),
    all_dropped: bool = False,
    shape: tuple[int, ...] = (1, 2, 2),
) -> Step:
    """A Step around labels ``y``; unset images are zeros of ``shape``, t 0, every label kept.

    ``mu`` overrides the cached posterior mean, so a term reads it instead of Eq. 9. ``terms``: each term's
    ``needs.forwards`` are drawn and evaluated by ``net``, in order, as the training step does.
    """
    y = torch.as_tensor(y)
    b = len(y)
    zeros = torch.zeros(b, *shape)
    step = Step(
        x0=zeros if x0 is None else x0,
        xt=zeros if xt is None else xt,
        t=torch.zeros(b, dtype=torch.long) if t is None else torch.as_tensor(t),
        eps=zeros if eps is None else eps,
        eps_hat=zeros if eps_hat is None else eps_hat,
        y=y,
        cond=torch.ones(b, dtype=torch.bool) if cond is None else torch.as_tensor(cond),
        all_dropped=all_dropped,
        schedule=linear_schedule(1000) if schedule is None else schedule,
        class_freq=torch.full((3,), 1 / 3) if class_freq is None else class_freq,
        group=group,
        group_size=group_size,
    )
    if mu is not None:
        step.__dict__["mu"] = mu  # cached_property storage
    for term in terms:
        for f in term.needs.forwards(step):
            step.extra_forwards.append(f.evaluated(net(f.xt, f.t, f.y, f.cond)))
    return step
