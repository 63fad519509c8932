"""PCL with ``pairs=global`` on 2 CPU processes (gloo) equals single-process PCL on the concatenated batch.

Gradient semantics being checked. ``torch.distributed.nn.functional.all_gather`` keeps gradients: its backward
sum-reduce-scatters the gradient of the gathered tensor, so rank r's local mu receives sum over ranks q of
dL_q / dmu_r. Every rank computes the same full-batch loss L (same gathered mu, labels and t), so that is
W x dL / dmu_r. DDP then averages parameter gradients over the W ranks:
(1 / W) sum_r W x dL / dtheta|via mu_r = dL / dtheta, exactly the single-process gradient on the whole batch.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from diffrop.losses.pcl import PCL
from diffrop.losses.step import Step
from diffrop.losses.tau import ExpDecay
from tests.helpers.config_objects import pcl
from tests.helpers.steps import make_step

WORLD, LOCAL_B, DIM = 2, 5, 12


def _batch():
    """The global batch, identical in every process: inputs x, labels, timesteps, cond mask."""
    g = torch.Generator().manual_seed(0)
    n = WORLD * LOCAL_B
    x = torch.randn(n, DIM, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    cond = torch.rand(n, generator=g) > 0.2
    return x, y, t, cond


def _net() -> nn.Linear:
    """A tiny "network" mu = W x + b with the same weights in every process."""
    g = torch.Generator().manual_seed(1)
    lin = nn.Linear(DIM, DIM)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(DIM, DIM, generator=g) * 0.3)
        lin.bias.copy_(torch.randn(DIM, generator=g) * 0.1)
    return lin


PAIRINGS = ("batch", "eq12")
GROUP = 2  # eq12: samples 0-1, 2-3, 4 of each rank share (t, eps); groups never span ranks


def _global_groups() -> torch.Tensor:
    """The eq12 groups of the concatenated batch, written independently: rank r's group g is its own."""
    i = torch.arange(WORLD * LOCAL_B)
    return (i // LOCAL_B) * 100 + (i % LOCAL_B) // GROUP


def _step(mu, y, t, cond, group, gather=None) -> Step:
    step = make_step(y, t, cond, mu=mu, group=group, shape=(1,))  # mu from the tiny "network" below
    if gather is not None:
        step.gather = gather
    return step


def _term(reduction: str, pairing: str) -> PCL:
    return pcl("exp", ExpDecay(1.0, 0.5), weight=1.0, distance="mean", reduction=reduction, pairs="global",
               pairing=pairing, group_size=GROUP)  # fmt: skip


def _gather_cat(x: torch.Tensor) -> torch.Tensor:  # the gather of the issue
    return torch.cat(torch.distributed.nn.functional.all_gather(x))


def _gather_lightning(
    x: torch.Tensor,
) -> torch.Tensor:  # what DiffROPModule does: all_gather(sync_grads=True)
    from lightning.fabric.utilities.distributed import _all_gather_ddp_if_available

    return _all_gather_ddp_if_available(x, sync_grads=True).flatten(0, 1)


def _worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        x, y, t, cond = _batch()
        part = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        results = {}
        for name, gather in (("cat", _gather_cat), ("lightning", _gather_lightning)):
            for reduction, pairing in [(r, p) for r in ("pairs_mean", "algorithm1_sum") for p in PAIRINGS]:
                net = DistributedDataParallel(_net())
                mu = net(x[part])
                mu.retain_grad()
                group = torch.arange(LOCAL_B) // GROUP if pairing == "eq12" else None
                loss = _term(reduction, pairing)(_step(mu, y[part], t[part], cond[part], group, gather))
                loss.backward()
                results[name, reduction, pairing] = {
                    "loss": loss.detach(),
                    "mu_grad": mu.grad.clone(),
                    "weight_grad": net.module.weight.grad.clone(),  # averaged over ranks by DDP
                }
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_global_pairs_match_single_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    (x, y, t, cond), lin = _batch(), _net()
    for reduction, pairing in [(r, p) for r in ("pairs_mean", "algorithm1_sum") for p in PAIRINGS]:
        lin.zero_grad()
        mu = lin(x)
        mu.retain_grad()
        group = _global_groups() if pairing == "eq12" else None
        loss = _term(reduction, pairing)(
            _step(mu, y, t, cond, group)
        )  # single process, whole batch, no gather
        loss.backward()
        for name in ("cat", "lightning"):
            got = [r[name, reduction, pairing] for r in ranks]
            for r in got:  # every rank sees the full-batch loss
                assert r["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
            mu_grad = torch.cat([r["mu_grad"] for r in got]) / WORLD  # rank r holds W x dL/dmu_r
            assert torch.allclose(mu_grad, mu.grad, rtol=1e-4, atol=1e-7), (name, reduction)
            for r in got:  # DDP's average over ranks is exactly the single-process gradient
                assert torch.allclose(r["weight_grad"], lin.weight.grad, rtol=1e-4, atol=1e-7), (
                    name,
                    reduction,
                )
