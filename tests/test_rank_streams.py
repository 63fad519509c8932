"""Multi-process training draws what one process drawing the whole global batch would (docs/design.md section 7).

Real `src/train.py` runs with `trainer=ddp_cpu` (2 gloo processes) on the Gaussian mixture, with PCL eq12 pairs (so
t and eps are shared inside groups of 4) and a per-sample label drop; tests.helpers.record_draws writes every
rank's t, eps and condition mask of every step. Independent expectations: two independent streams never agree
on a 16-dimensional Gaussian draw, uniform t passes a chi-square test, independent Gaussians are uncorrelated,
and a run is a pure function of its seed and world size (bitwise, resumed or not).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffrop.training.rank_streams import RankStreams, seed_step
from tests.helpers.record_draws import load_draws
from tests.helpers.train_utils import REPO, TRAIN_PY, load_ckpt, train_env
from tests.test_resume import assert_same_final

STEPS, EVERY, KILL_AT, GROUP, LOCAL_BATCH = 24, 6, 9, 4, 16
DDP_RUN = [
    "trainer=ddp_cpu",
    "data=gaussian_lt",
    "model=mlp",
    "logger=csv",
    f"data.batch_size={2 * LOCAL_BATCH}",  # the global batch
    "loss=pcl_exp",
    "loss.terms.pcl.pairing=eq12",
    f"loss.terms.pcl.group_size={GROUP}",
    "model.label_drop=sample",
    "optim.warmup_steps=2",
    "optim.ema_decay=0.9",
    f"callbacks.checkpoint.every_n_train_steps={EVERY}",
    "callbacks.sample_grid=null",
    "~callbacks.progress_bar",
    "~callbacks.model_summary",
    "+callbacks.record_draws._target_=tests.helpers.record_draws.RecordDraws",
    "+callbacks.kill_at._target_=tests.helpers.kill_at.KillAt",
    f"trainer.max_steps={STEPS}",
]


def _train(
    run_dir: Path, *extra: str, kill_at: str | None = None, base=DDP_RUN
) -> subprocess.CompletedProcess:
    """One run in its own session; every process of it (Lightning starts rank 1) is gone when this returns."""
    env = train_env() | ({"DIFFROP_KILL_AT": kill_at} if kill_at else {})
    cmd = [sys.executable, str(TRAIN_PY), *base, f"+callbacks.record_draws.out_dir={run_dir}/draws",
           f"hydra.run.dir={run_dir}", *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a rank left behind by a killed rank 0
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp_streams")
    full, killed, other_world = root / "full", root / "killed", root / "other_world"
    proc = _train(full)
    assert proc.returncode == 0, proc.stdout[-3000:]

    proc = _train(killed, kill_at=f"step:{KILL_AT}")  # every rank SIGKILLs itself after step 9's update
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-3000:]
    assert load_ckpt(killed / "checkpoints" / "last.ckpt")["global_step"] == EVERY
    (other_world / "checkpoints").mkdir(parents=True)
    shutil.copy(killed / "checkpoints" / "last.ckpt", other_world / "checkpoints" / "last.ckpt")
    proc = _train(killed)  # the same command: resumes from last.ckpt (step 6)
    assert proc.returncode == 0, proc.stdout[-3000:]

    one_process = [
        *(o for o in DDP_RUN if not o.startswith(("trainer=", "trainer.max_steps"))),
        "trainer=cpu",
    ]
    proc = _train(other_world, f"trainer.max_steps={EVERY + 2}", base=one_process)
    assert proc.returncode == 0, proc.stdout[-3000:]
    (root / "other_world.log").write_text(proc.stdout)
    return {"full": full, "killed": killed, "other_world": other_world, "root": root}


def _draws(run_dir: Path) -> list[dict[int, dict[str, torch.Tensor]]]:
    ranks = [load_draws(run_dir / "draws", r) for r in range(2)]
    assert sorted(ranks[0]) == sorted(ranks[1]) == list(range(STEPS))
    return ranks


@pytest.mark.slow
def test_ranks_draw_their_own_t_eps_and_label_drop(runs):
    rank0, rank1 = _draws(runs["full"])
    for k in range(STEPS):
        assert not torch.equal(rank0[k]["t"], rank1[k]["t"]), k
        assert not torch.equal(rank0[k]["eps"], rank1[k]["eps"]), k
    # p = 0.1 per sample: 16 samples agree with probability 0.9^16 + ... ~ 0.04 per step
    differ = sum(not torch.equal(rank0[k]["cond"], rank1[k]["cond"]) for k in range(STEPS))
    assert differ >= STEPS * 3 // 4, differ


@pytest.mark.slow
def test_union_of_the_ranks_t_is_uniform_and_their_eps_uncorrelated(runs):
    rank0, rank1 = _draws(runs["full"])
    group_t = torch.cat([r[k]["t"][::GROUP] for r in (rank0, rank1) for k in range(STEPS)])  # one t per group
    assert len(group_t) == 2 * STEPS * LOCAL_BATCH // GROUP  # 192 independent draws
    counts = torch.bincount(group_t // 125, minlength=8).double()  # 8 bins of 125 timesteps
    expected = len(group_t) / 8
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 29.9, counts  # chi2_7 0.9999 quantile: a fair test fails once in 10^4
    e0 = torch.cat([rank0[k]["eps"][::GROUP].flatten() for k in range(STEPS)])
    e1 = torch.cat([rank1[k]["eps"][::GROUP].flatten() for k in range(STEPS)])
    corr = float(torch.corrcoef(torch.stack([e0, e1]))[0, 1])
    assert abs(corr) < 4 / len(e0) ** 0.5, corr  # 1536 pairs: |r| < 0.10 (4 standard errors)


@pytest.mark.slow
def test_eq12_groups_share_t_and_eps_inside_a_rank_and_never_across_ranks(runs):
    rank0, rank1 = _draws(runs["full"])
    for k in range(STEPS):
        for draws in (rank0[k], rank1[k]):
            assert draws["group"].tolist() == [i // GROUP for i in range(LOCAL_BATCH)]
            t, eps = draws["t"].view(-1, GROUP), draws["eps"].view(LOCAL_BATCH // GROUP, GROUP, -1)
            assert (t == t[:, :1]).all() and (eps == eps[:, :1]).all()
        own = {tuple(e.tolist()) for e in rank0[k]["eps"][::GROUP].flatten(1)}
        assert not own & {tuple(e.tolist()) for e in rank1[k]["eps"][::GROUP].flatten(1)}


@pytest.mark.slow
def test_sigkill_and_resume_under_two_ranks_equals_the_uninterrupted_run_bitwise(runs):
    # The killed run's first launch drew steps 0-8 in new processes: the same seed and world size give the same
    # draws; its second launch (from step 6) draws steps 6-23 as the uninterrupted run did.
    for a, b in zip(_draws(runs["full"]), _draws(runs["killed"]), strict=True):
        for k in range(STEPS):
            for name in ("t", "eps", "cond", "y"):
                assert torch.equal(a[k][name], b[k][name]), (k, name)
    assert_same_final(runs["full"], runs["killed"])  # weights, EMA, Adam state, LR schedule


@pytest.mark.slow
def test_resuming_on_another_world_size_continues_with_a_note(runs):
    log = (runs["root"] / "other_world.log").read_text()
    assert "written by 2 ranks and resumes on 1" in log, log[-3000:]
    assert load_ckpt(runs["other_world"] / "checkpoints" / "last.ckpt")["global_step"] == EVERY + 2


def _draw_all() -> tuple[float, float, float]:
    return torch.rand(()).item(), random.random(), float(np.random.rand())


def test_a_step_stream_is_a_pure_function_of_seed_rank_and_step():
    seed_step(3, 1, 40)
    first = _draw_all()
    torch.manual_seed(99), random.seed(99)  # whatever ran before
    seed_step(3, 1, 40)
    assert _draw_all() == first
    others = set()
    for key in ((3, 0, 40), (3, 1, 41), (4, 1, 40)):
        seed_step(*key)
        others.add(_draw_all()[0])
    assert first[0] not in others and len(others) == 3


def test_rank_streams_setting_errors_name_the_key():
    with pytest.raises(ValueError, match=r"seed must be an integer >= 0"):
        RankStreams(seed=-1, streams="per_rank")
    with pytest.raises(ValueError, match=r"callbacks.rank_streams.streams='per_device' is not one of"):
        RankStreams(seed=0, streams="per_device")
