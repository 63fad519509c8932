"""Section train: one Lightning training step (the Trainer with our callbacks and logger) vs a minimal plain-PyTorch
loop of the same network, loss, optimiser, clipping and EMA on the same device-resident batches. Target: < 5 %."""

from __future__ import annotations

import random
import statistics

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from benchmarks.harness import config, run_steps, train_cases
from benchmarks.timing import CUDA, interleaved, median_time, paired_ratio
from diffrop import build


def plain_step(cfg, warmup: int, reps: int) -> float:
    """The same step without Lightning: gather, flip, q_sample, forward, eps-MSE, backward, clip, Adam, EMA."""
    torch.manual_seed(0)
    device = torch.device("cuda" if CUDA else "cpu")
    datamodule = build.build_datamodule(cfg)
    images = datamodule.train_set.images.to(device)
    labels = datamodule.train_set.labels.to(device)
    net = build.build_net(cfg, **build.data_shape(datamodule)).to(device)
    if CUDA and cfg.model.get("channels_last", False) in (True, "auto"):
        net = net.to(memory_format=torch.channels_last)
    ema = [p.detach().clone() for p in net.parameters()]
    schedule = instantiate(cfg.diffusion).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.optim.lr, fused=True)
    bf16 = CUDA and str(cfg.trainer.precision).startswith("bf16")
    batch = cfg.data.batch_size

    def step() -> None:
        idx = torch.randint(0, len(labels), (batch,), device=device)
        x0 = images[idx].float().div_(127.5).sub_(1.0)
        y = labels[idx]
        t = torch.randint(0, schedule.num_steps, (batch,), device=device)
        eps = torch.randn_like(x0)
        xt = schedule.q_sample(x0, t, eps)
        if CUDA:
            xt = xt.contiguous(memory_format=torch.channels_last)
        cond = torch.full_like(y, random.random() >= 0.1, dtype=torch.bool)  # host RNG, as ours
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.mse_loss(net(xt, t, y, cond).float(), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.trainer.gradient_clip_val)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, list(net.parameters()), 1 - cfg.optim.ema_decay)

    return median_time(step, warmup, reps)


def bench_train(args) -> list[dict]:
    rows = []
    for model, size, batch in train_cases(args):
        plain_cfg = config(model, size, batch)
        secs = interleaved(
            {
                "plain": lambda c=plain_cfg: plain_step(c, args.warmup, args.reps),
                "lightning": lambda m=model, s=size, b=batch: run_steps(args, m, s, b),
            },
            args.rounds,
        )
        ratio = paired_ratio(secs["lightning"], secs["plain"])
        rows.append(
            {
                "model": model,
                "image_size": size,
                "batch": batch,
                "lightning_ms": 1e3 * statistics.median(secs["lightning"]),
                "plain_ms": 1e3 * statistics.median(secs["plain"]),
                "overhead_pct": 100 * (ratio - 1),
                "target_pct": 5.0,
                "rounds": args.rounds,
            }
        )
    return rows
