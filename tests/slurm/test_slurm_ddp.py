"""Multi-process DDP on the local cluster: 2 SLURM tasks on one node are the 2 ranks (gloo on CPU).

Lightning's SLURMEnvironment takes the ranks from SLURM_PROCID / SLURM_NTASKS; nothing is spawned by Lightning.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers.config_objects import linear_schedule, pcl
from tests.helpers.rank_probe import weights_sha256
from tests.helpers.slurm_runs import loss_steps, sweep_job_ids

pytestmark = pytest.mark.slurm

MAX_STEPS = 4


@pytest.mark.slow
def test_ddp_training_two_slurm_tasks(start_multirun: Any, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "ddp"
    run = start_multirun(
        sweep_dir,
        f"trainer.max_steps={MAX_STEPS}",
        "loss=pcl_exp",
        "loss.terms.pcl.pairs=global",  # PCL all-gathers mu across the two ranks inside real training
        "loss.terms.pcl.pairing=eq12",  # global pairs need one-pass pairs (partner draws within a device)
        "+callbacks.rank_probe._target_=tests.helpers.rank_probe.RankProbe",
        f"+callbacks.rank_probe.out_dir={sweep_dir}/probe",
        trainer="ddp_cpu",  # devices=2, strategy=ddp; the launcher asks SLURM for tasks_per_node=trainer.devices
    )
    assert run.wait(timeout_s=600) == 0, run.output()
    (job_id,) = sweep_job_ids(sweep_dir)
    assert "--ntasks-per-node=2" in next((sweep_dir / ".submitit").glob("*/*_submission.sh")).read_text()

    ranks = [json.loads((sweep_dir / "probe" / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["global_rank"] for r in ranks] == [0, 1]
    assert [r["slurm_procid"] for r in ranks] == ["0", "1"]  # ranks come from SLURM
    assert {r["cluster_environment"] for r in ranks} == {"SLURMEnvironment"}
    assert {r["world_size"] for r in ranks} == {2}
    assert ranks[0]["pid"] != ranks[1]["pid"]
    assert {r["slurm_job_id"] for r in ranks} == {ranks[0]["slurm_job_id"]}  # one job, two tasks
    assert [r["global_step"] for r in ranks] == [MAX_STEPS, MAX_STEPS]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"], "ranks diverged"

    run_dir = sweep_dir / "0"
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == MAX_STEPS
    assert weights_sha256(ckpt["state_dict"]) == ranks[0]["weights_sha256"]
    # Only rank 0 writes: one checkpoint, one metrics row per step, one job record.
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]
    assert loss_steps(run_dir) == list(range(MAX_STEPS))
    assert json.loads((run_dir / "job.json").read_text())["slurm_job_id"] == job_id
    assert not (run_dir / "FAILED").exists()


def test_pcl_global_pairs_across_slurm_tasks(submitit_executor: Any, wait_result: Any) -> None:
    """PCL pairs=global over 2 SLURM tasks = one process on the concatenated batch (loss and DDP gradients)."""
    world, local_b, dim = 2, 5, 12

    def make_batch() -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(0)
        n = world * local_b
        x = torch.randn(n, dim, generator=g)
        y = torch.randint(0, 3, (n,), generator=g)
        t = torch.randint(0, 1000, (n,), generator=g)
        cond = torch.rand(n, generator=g) > 0.2
        weight = torch.randn(dim, dim, generator=g) * 0.3
        return x, y, t, cond, weight

    def pcl_loss(mu, y, t, cond, reduction, gather=None) -> torch.Tensor:
        from diffrop.losses.step import Step
        from diffrop.losses.tau import ExpDecay

        z = torch.zeros(len(y), 1)
        step = Step(x0=z, xt=z, t=t, eps=z, eps_hat=z, y=y, cond=cond, all_dropped=False,
                    schedule=linear_schedule(1000), class_freq=torch.ones(3) / 3)  # fmt: skip
        step.__dict__["mu"] = mu  # the posterior mean comes from the tiny linear "network"
        if gather is not None:
            step.gather = gather
        return pcl("exp", ExpDecay(1.0, 0.5), reduction=reduction, pairs="global", pairing="batch")(step)

    def on_rank() -> dict[str, Any]:
        import os

        import torch.distributed as dist
        from lightning.fabric.utilities.distributed import _all_gather_ddp_if_available
        from torch.nn.parallel import DistributedDataParallel

        rank, size = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
        port = 20000 + int(os.environ["SLURM_JOB_ID"]) % 20000
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
        try:
            x, y, t, cond, weight = make_batch()
            part = slice(rank * local_b, (rank + 1) * local_b)
            out: dict[str, Any] = {"rank": rank, "world": size}
            for reduction in ("pairs_mean", "algorithm1_sum"):
                lin = torch.nn.Linear(dim, dim, bias=False)
                lin.weight.data.copy_(weight)
                net = DistributedDataParallel(lin)
                loss = pcl_loss(  # the gather DiffusionModule uses: all_gather(sync_grads=True)
                    net(x[part]),
                    y[part],
                    t[part],
                    cond[part],
                    reduction,
                    gather=lambda v: _all_gather_ddp_if_available(v, sync_grads=True).flatten(0, 1),
                )
                loss.backward()  # DDP averages the weight gradient over the ranks
                out[reduction] = (loss.item(), lin.weight.grad.clone())
            return out
        finally:
            dist.destroy_process_group()

    submitit_executor.update_parameters(tasks_per_node=world, nodes=1)
    results = sorted(wait_result(submitit_executor.submit(on_rank), timeout_s=180), key=lambda r: r["rank"])
    assert [(r["rank"], r["world"]) for r in results] == [(0, world), (1, world)]

    x, y, t, cond, weight = make_batch()
    for reduction in ("pairs_mean", "algorithm1_sum"):
        w = weight.clone().requires_grad_(True)
        loss = pcl_loss(x @ w.T, y, t, cond, reduction)  # one process, whole batch, no gather
        loss.backward()
        for r in results:
            got_loss, got_grad = r[reduction]
            assert got_loss == pytest.approx(loss.item(), rel=1e-5), reduction
            assert torch.allclose(got_grad, w.grad, rtol=1e-4, atol=1e-7), reduction
