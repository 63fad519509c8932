"""DiffROP benchmarks (numbers, not pass/fail tests): framework overhead, loss-term cost, samplers, evaluation.

    python benchmarks/bench.py                       # every section, on the GPU if there is one
    python benchmarks/bench.py --only train,losses --reps 10

Prints rich tables and writes ``benchmarks/results/<device>.json``. A training-step time is the median of
``--reps`` steps after ``--warmup`` untimed ones of one short run; on a GPU each measurement ends with
``torch.cuda.synchronize()``. Everything that is compared is measured interleaved: ``--rounds`` rounds of
A B C A B C ..., and a ratio is the median over rounds of the paired per-round ratios, so that the drift of a
shared machine (another job starting, thermal limits) hits both sides of a pair alike and cancels.

1. train: one training step of our LightningModule under the Trainer (CSV logger, LR monitor, checkpoint
   callback, NaN guard, EMA; no progress bar or sample grid) vs a minimal plain-PyTorch loop of the same network,
   loss (eps-MSE), fused Adam, clipping and foreach EMA on the same device-resident batches. Target: < 5 %.
2. losses: step time of ddpm, pcl_* and cbdm relative to ddpm (PCL with eq12 / batch pairs: < 3 % over DDPM; the
   default partner pairing adds one forward and backward, like CBDM).
3. compile: the Lightning step eager vs ``model.compile=true`` (each round compiles afresh: give it warm-up).
4. samplers: images/s of ``--samplers`` (default DDIM-100, DPM-Solver++(2M)-10 / 20; ``ddpm-1000`` on request),
   unguided and guided (one batched forward of 2B images, so guided should cost < 2x), fp32 and (CUDA) bf16;
   speed-ups vs DDIM-100 and the minutes 50k samples take.
5. eval: Inception feature extraction images/s (random weights in torch-fidelity's format: the real ones may be
   absent), time / peak memory of improved precision-recall on N x N features (chunked), and KID on them.
   sampler-compile (on request): the last of them guided, eager vs ``sampler.compile=true`` (CUDA graphs on a
   GPU), images/s and the largest pixel difference.
6. kmeans (on request): one F_8 / F_1/8 k-means run (torch on the device; sklearn with ``--kmeans-sklearn``).
7. profile (on request): ``--profile-steps`` Lightning training steps under ``torch.profiler`` (CPU + CUDA
   activities): a Chrome trace, the top kernels / ops, and where the step's wall time goes: GPU kernels (CPU: ops),
   the GPU idle while the host dispatches (launch overhead), and host-only time (Python, hooks, data).
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from unittest import mock

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from rich.console import Console
from rich.table import Table

from diffrop import build
from diffrop.diffusion.sampling import SamplerSpec, sample

REPO = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
console = Console(width=140)

# (model config, image size, batch) per device kind: the default net at batch 128 on a GPU; CPU-sized batches on CPU
TRAIN_CASES = {"cuda": [("ddpm_unet", 32, 128)], "cpu": [("tiny", 16, 32), ("ddpm_unet", 32, 8)]}
# name -> overrides; PCL's default pairing (partner) adds one forward like CBDM's, eq12 / batch pairing add none
LOSSES = {
    "ddpm": ("loss=ddpm",),
    **{f"pcl_{phi}": (f"loss=pcl_{phi}",) for phi in ("exp", "hinge", "neg_l2", "recip")},
    "pcl_exp_eq12": ("loss=pcl_exp", "loss.terms.pcl.pairing=eq12"),
    "pcl_exp_batch": ("loss=pcl_exp", "loss.terms.pcl.pairing=batch"),
    "cbdm": ("loss=cbdm",),
    "cbdm_pcl_exp": ("loss=cbdm_pcl_exp",),
}
ONE_FORWARD = ("pcl_exp_eq12", "pcl_exp_batch")  # target: < 3 % over DDPM


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def median_time(fn: Callable[[], object], warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes (device work included)."""
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def interleaved(measures: Mapping[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run ``rounds`` rounds of every measurement in order (A B C A B C ...); each returns seconds.

    Returns {name: [seconds of round 0, 1, ...]}: compare two entries with ``paired_ratio``, not with a ratio
    of medians, so that a load change between rounds cancels.
    """
    if rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {rounds}")
    secs: dict[str, list[float]] = {name: [] for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            secs[name].append(measure())
    return secs


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over rounds of a_i / b_i (the same round's two measurements)."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def device_name() -> str:
    if CUDA:
        return torch.cuda.get_device_name()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {torch.get_num_threads()} thread(s)"


def config(model: str, size: int, batch: int, *extra: str):
    overrides = [
        "data=digits_lt",  # bundled, no download; the CIFAR shape via data.image_size=32
        f"data.image_size={size}",
        f"data.batch_size={batch}",
        "data.imb_factor=1.0",  # all 1,797 images, enough for batch 128
        f"model={model}",
        f"trainer={'gpu' if CUDA else 'cpu'}",
        "logger=csv",
        "optim.warmup_steps=0",
        "trainer.log_every_n_steps=50",
        "callbacks.checkpoint.every_n_train_steps=100000",
        "~callbacks.sample_grid",
        "~callbacks.progress_bar",
        "~callbacks.model_summary",
        *extra,
    ]
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):  # what Hydra's job runner does for src/train.py
        cfg.hydra.runtime.output_dir = tempfile.mkdtemp(prefix="diffrop_bench_")
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


# --- 1 and 2: training steps ------------------------------------------------------------------------------------
class StepTimes(L.Callback):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        sync()
        self.stamps.append(time.perf_counter())


def lightning_step(cfg, warmup: int, reps: int) -> float:
    """Median wall time between consecutive batch ends: the whole loop (data, hooks, logging) is inside."""
    L.seed_everything(0, verbose=False)
    datamodule = build.build_datamodule(cfg)
    module = build.build_module(cfg, datamodule)
    timer = StepTimes()
    trainer = build.build_trainer(
        cfg, cfg.paths.output_dir, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.callbacks.append(timer)
    trainer.fit(module, datamodule=datamodule)
    diffs = [b - a for a, b in zip(timer.stamps, timer.stamps[1:], strict=False)]
    return statistics.median(diffs[warmup:])


def plain_step(cfg, warmup: int, reps: int) -> float:
    """The same step without Lightning: gather, flip, q_sample, forward, eps-MSE, backward, clip, Adam, EMA."""
    torch.manual_seed(0)
    device = torch.device("cuda" if CUDA else "cpu")
    datamodule = build.build_datamodule(cfg)
    images = datamodule.train_set.images.to(device)
    labels = datamodule.train_set.labels.to(device)
    net = build.build_net(cfg, datamodule.num_classes).to(device)
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


def train_cases(args) -> list[tuple[str, int, int]]:
    cases = TRAIN_CASES["cuda" if CUDA else "cpu"]
    return [c for c in cases if c[0] == args.model] if args.model else cases


def run_steps(args, model: str, size: int, batch: int, *extra: str, warmup: int | None = None) -> float:
    """Median Lightning step of one fresh short run (a new config, run directory and module every call)."""
    warmup = args.warmup if warmup is None else warmup
    cfg = config(model, size, batch, f"trainer.max_steps={warmup + args.reps + 1}", *extra)
    return lightning_step(cfg, warmup, args.reps)


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


def bench_losses(args) -> list[dict]:
    model, size, batch = train_cases(args)[0]
    secs = interleaved(
        {name: lambda o=over: run_steps(args, model, size, batch, *o) for name, over in LOSSES.items()},
        args.rounds,
    )
    return [
        {
            "loss": k,
            "model": model,
            "batch": batch,
            "ms": 1e3 * statistics.median(v),
            "ratio_vs_ddpm": paired_ratio(v, secs["ddpm"]),
            "target_ratio": 1.03 if k in ONE_FORWARD else None,
            "rounds": args.rounds,
        }
        for k, v in secs.items()
    ]


def bench_compile(args) -> list[dict]:
    """Eager vs ``model.compile=true`` Lightning steps; compilation (and any recompile) falls in the warm-up."""
    model, size, batch = train_cases(args)[0]
    warmup = max(args.warmup, args.compile_warmup)
    secs = interleaved(
        {
            mode: lambda m=mode: run_steps(args, model, size, batch, f"model.compile={m}", warmup=warmup)
            for mode in ("false", "true")
        },
        args.rounds,
    )
    ratio = paired_ratio(secs["true"], secs["false"])
    return [
        {
            "model": model,
            "batch": batch,
            "eager_ms": 1e3 * statistics.median(secs["false"]),
            "compiled_ms": 1e3 * statistics.median(secs["true"]),
            "compiled_vs_eager": ratio,
            "images_per_s_compiled": batch / statistics.median(secs["true"]),
            "rounds": args.rounds,
        }
    ]


# --- 4: samplers --------------------------------------------------------------------------------------------------
def parse_samplers(text: str) -> list[tuple[str, int]]:
    """ "ddim-100,dpmpp2m-10" -> [("ddim", 100), ("dpmpp2m", 10)]."""
    out = []
    for item in text.split(","):
        name, _, steps = item.strip().partition("-")
        out.append((name, int(steps)))
    return out


def sampling_case() -> tuple[str, int, DictConfig, torch.device, torch.nn.Module]:
    """The device's first training case as a sampling network: (model, image size, config, device, net in eval)."""
    model, size, _ = TRAIN_CASES["cuda" if CUDA else "cpu"][0]
    cfg = config(model, size, 8)
    device = torch.device("cuda" if CUDA else "cpu")
    net = build.build_net(cfg, 10).to(device).eval()
    if CUDA:
        net = net.to(memory_format=torch.channels_last)
    return model, size, cfg, device, net


def bench_samplers(args) -> list[dict]:
    model, size, cfg, device, net = sampling_case()
    b = args.sample_batch
    y = torch.arange(b, device=device) % 10
    shape = (b, 3, size, size)
    precisions = args.precisions.split(",") if args.precisions else (["fp32", "bf16"] if CUDA else ["fp32"])
    specs = {}
    for guidance in (0.0, 1.0):
        for precision in precisions:
            for name, steps in parse_samplers(args.samplers):
                eta = 0.0 if name == "ddim" else None
                spec = SamplerSpec(name, steps, eta, guidance, batch_size=b, precision=precision)
                specs[(name, steps, guidance, precision)] = spec
    schedules = {n: instantiate(cfg.diffusion, num_steps=n).to(device) for n in {1000, args.ddpm_steps}}

    def call(key) -> float:
        schedule = schedules[key[1] if key[0] == "ddpm" else 1000]  # DDPM visits every step of its T
        return timed(lambda: sample(net, schedule, y, shape, specs[key]))

    for key in specs:  # warm-up: cuDNN autotuning, allocator
        call(key)
    secs = interleaved({key: lambda k=key: call(k) for key in specs}, args.rounds)
    rows = []
    base_name, base_steps = parse_samplers(args.samplers)[0]
    for (name, steps, guidance, precision), v in secs.items():
        base = secs[(base_name, base_steps, guidance, precision)]
        row = {
            "sampler": f"{name}-{steps}",
            "guidance": guidance,
            "precision": precision,
            "model": model,
            "batch": b,
            "images_per_s": b / statistics.median(v),
            f"speedup_vs_{base_name}{base_steps}": paired_ratio(base, v),
            "minutes_per_50k": 50000 * statistics.median(v) / b / 60,
        }
        if guidance:
            row["guided_cost_x"] = paired_ratio(v, secs[(name, steps, 0.0, precision)])
        if precision != "fp32":
            row["speedup_vs_fp32"] = paired_ratio(secs[(name, steps, guidance, "fp32")], v)
        rows.append(row)
    return rows


def bench_sampler_compile(args) -> list[dict]:
    """Eager vs ``sampler.compile=true`` (static shapes; CUDA graphs on a GPU) for the last of ``--samplers``,
    guided (w = 1), in the last of the precisions; plus the largest pixel difference between the two on the same
    noise (uint8 levels), so that a speed-up is never read without its effect on the images."""
    from diffrop.diffusion.samplers.loop import StackedGenerator
    from diffrop.diffusion.sampling_net import sampling_net
    from diffrop.evaluation.generate import to_uint8

    _, size, cfg, device, net = sampling_case()
    b = args.sample_batch
    name, steps = parse_samplers(args.samplers)[-1]
    precision = (args.precisions or ("bf16" if CUDA else "fp32")).split(",")[-1]
    eta = 0.0 if name == "ddim" else None
    specs = {
        c: SamplerSpec(name, steps, eta, 1.0, batch_size=b, precision=precision, compile=bool(c))
        for c in (0, 1)
    }
    nets = {c: sampling_net(net, spec, device) for c, spec in specs.items()}
    schedule = instantiate(cfg.diffusion).to(device)
    y = torch.arange(b, device=device) % 10

    def draw(c: int) -> torch.Tensor:
        gen = StackedGenerator(range(b), device)
        return sample(nets[c], schedule, y, (b, 3, size, size), specs[c], gen)

    t0 = time.perf_counter()
    images = {c: to_uint8(draw(c)) for c in (1, 0)}  # the first compiled call compiles (and records graphs)
    first_s = time.perf_counter() - t0
    secs = interleaved({c: lambda c=c: timed(lambda: draw(c)) for c in (0, 1)}, args.rounds)
    return [
        {
            "sampler": f"{name}-{steps}",
            "guidance": 1.0,
            "precision": precision,
            "batch": b,
            "cuda_graphs": CUDA,
            "eager_images_per_s": b / statistics.median(secs[0]),
            "compiled_images_per_s": b / statistics.median(secs[1]),
            "speedup": paired_ratio(secs[0], secs[1]),
            "minutes_per_50k_compiled": 50000 * statistics.median(secs[1]) / b / 60,
            "first_calls_s": first_s,
            "max_pixel_diff": int((images[0].int() - images[1].int()).abs().max()),
        }
    ]


# --- 5: evaluation ------------------------------------------------------------------------------------------------
def random_inception(path: Path) -> Path:
    """torch-fidelity's Inception-V3 with random (He) weights, saved in its on-disk format."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    cls = tfi.FeatureExtractorInceptionV3
    with (
        mock.patch.object(tfi, "load_state_dict_from_url", lambda *a, **k: None),
        mock.patch.object(cls, "load_state_dict", lambda self, state_dict: None),
    ):
        net = cls("inception-v3-compat", ["2048"])
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.save(net.state_dict(), path)
    return path


WORKER = Path(__file__).resolve().parent / "_worker.py"  # child-process measurements (fresh peak memory)


def kid_row(n: int) -> dict:
    """KID on N x 2048 features with the default 100 subsets of 1000 (float64, on the GPU if there is one)."""
    from diffrop.evaluation.metrics.scores import kernel_inception_distance

    g = torch.Generator().manual_seed(0)
    real, fake = (torch.randn(n, 2048, generator=g).to("cuda" if CUDA else "cpu") for _ in range(2))
    sec = timed(lambda: kernel_inception_distance(real, fake, subsets=100, subset_size=min(1000, n)))
    return {"what": f"KID {n} x {n} (100 subsets of {min(1000, n)}, float64)", "n": n, "seconds": sec}


def bench_eval(args) -> list[dict]:
    from diffrop.evaluation.metrics.features import make_extractor

    device = "cuda" if CUDA else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        extractor = make_extractor("torch-fidelity", random_inception(Path(tmp) / "inception.pth"), device)
        images = torch.randint(0, 256, (args.fe_images, 3, 32, 32), dtype=torch.uint8)
        bs = min(args.fe_images, 200 if CUDA else 32)
        sec = median_time(
            lambda: extractor.extract(images, batch_size=bs, progress=False), 1, max(1, args.reps // 3)
        )
    rows = [
        {"what": "Inception-V3 features (299x299)", "n": args.fe_images, "images_per_s": args.fe_images / sec}
    ]
    chunk = min(10000, max(1, args.pr_n // 5))  # the library default (10000) at N = 50000
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    cmd = [sys.executable, str(WORKER), "precision_recall", str(args.pr_n), str(chunk)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(out.stderr)
    pr = json.loads(out.stdout.strip().splitlines()[-1])
    rows.append(kid_row(args.pr_n))
    dense = 2 * args.pr_n * args.pr_n * 4  # what two dense float32 N x N distance matrices would take
    rows.append(
        {
            "what": f"precision/recall {args.pr_n} x {args.pr_n} (chunk {chunk}, float32)",
            "n": args.pr_n,
            "seconds": pr["seconds"],
            "peak_extra_GiB": pr["peak_extra_bytes"] / 2**30,
            "dense_GiB": dense / 2**30,
            "block_GiB": chunk * args.pr_n * 4 / 2**30,
        }
    )
    return rows


# --- 6: PRD k-means -----------------------------------------------------------------------------------------------
def mixture_features(n: int, dim: int = 2048, modes: int = 100, seed: int = 0) -> torch.Tensor:
    """n rows of a Gaussian mixture (``modes`` equal modes, within-mode spread as large as the spread of the means):
    a stand-in for Inception features that has cluster structure, unlike plain noise, so k-means converges as on
    real features rather than wandering."""
    g = torch.Generator().manual_seed(seed)
    centres = 0.5 * torch.randn(modes, dim, generator=g)
    return centres[torch.randint(0, modes, (n,), generator=g)] + 0.5 * torch.randn(n, dim, generator=g)


def bench_kmeans(args) -> list[dict]:
    """One PRD k-means run (F_8 / F_1/8 do ``eval.prd_runs`` = 10 of them) on ``--kmeans-n`` x 2048 features into
    ``--kmeans-k`` clusters (paper size: 100000 = 50k generated + 50k reference, 20 x 100 = 2000): torch on the
    device, and with ``--kmeans-sklearn`` the reference code's sklearn ``MiniBatchKMeans(n_init=10)`` (CPU)."""
    from diffrop.evaluation.metrics.scores import cluster_labels

    x = mixture_features(args.kmeans_n)
    backends = ["torch", *(["sklearn"] if args.kmeans_sklearn else [])]
    rows = []
    for backend in backends:
        feats = x.to("cuda" if CUDA and backend == "torch" else "cpu")
        t_cpu = time.process_time()
        sec = timed(lambda f=feats, b=backend: cluster_labels(f, args.kmeans_k, seed=0, kmeans=b))
        rows.append(
            {
                "what": f"PRD k-means, 1 run ({backend})",
                "device": str(feats.device),
                "n": args.kmeans_n,
                "k": args.kmeans_k,
                "seconds": sec,
                "cpu_seconds": time.process_time() - t_cpu,
            }
        )
    return rows


# --- 7: profile of the training step ------------------------------------------------------------------------------
def merge(intervals: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Union of [start, end) intervals as sorted disjoint intervals."""
    out: list[tuple[float, float]] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def covered(intervals: Sequence[tuple[float, float]], windows: Sequence[tuple[float, float]]) -> float:
    """Length of the union of ``intervals`` inside the union of ``windows``."""
    total, ws = 0.0, merge(windows)
    for start, end in merge(intervals):
        for w0, w1 in ws:
            total += max(0.0, min(end, w1) - max(start, w0))
    return total


DEVICE_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}  # work on the GPU's timeline
HOST_OP_CATS = {"cpu_op", "cuda_runtime", "cuda_driver"}  # the host inside an ATen op or a CUDA API call


def trace_breakdown(trace: Mapping) -> dict:
    """Where the profiled steps' wall time goes, from a Chrome trace of ``torch.profiler`` (``traceEvents``).

    The steps are the ``ProfilerStep#k`` spans (batch end to batch end, each ending in a device sync: the whole loop).
    Their wall time W is split into three exclusive parts, so the fractions sum to 1:
    ``compute`` = the GPU runs a kernel / memcpy / memset (CUDA), or the host is inside an ATen op (CPU run);
    ``dispatch_gap`` = the GPU is idle while the host is inside an op or a CUDA API call (launch and dispatch
    overhead: the GPU waits for work being issued); 0 on a CPU run; ``host_outside_ops`` = neither: Python,
    Lightning hooks, logging, data loading, idle. ``host_in_ops`` (not part of the sum) is the share of W the host
    spends inside ops / CUDA calls (cuda*Synchronize excluded; an op that blocks, like ``.item()``, still counts),
    overlapping GPU work or not: near 1 with a sizeable ``dispatch_gap`` means the host is the bottleneck.
    """
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X" and "dur" in e]
    steps = [  # the host-side spans (a CUDA trace repeats them on the GPU as gpu_user_annotation)
        (e["ts"], e["ts"] + e["dur"])
        for e in events
        if e.get("cat") == "user_annotation" and str(e.get("name", "")).startswith("ProfilerStep#")
    ]
    if not steps:
        raise ValueError("no ProfilerStep# spans in the trace: profile with a schedule and call step()")
    device = [(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") in DEVICE_CATS]
    host = [  # a cuda*Synchronize call is the host waiting for the GPU, not dispatching
        (e["ts"], e["ts"] + e["dur"])
        for e in events
        if e.get("cat") in HOST_OP_CATS and "Synchronize" not in str(e.get("name", ""))
    ]
    wall = covered(steps, steps)
    compute_iv = device if device else host
    compute = covered(compute_iv, steps)
    busy = covered([*compute_iv, *host], steps)  # compute or host in ops
    return {
        "steps": len(steps),
        "step_ms": wall / len(steps) / 1e3,  # trace times are microseconds
        "timeline": "gpu" if device else "cpu",
        "compute": compute / wall,
        "dispatch_gap": (busy - compute) / wall,
        "host_outside_ops": (wall - busy) / wall,
        "host_in_ops": covered(host, steps) / wall,
    }


class ProfileSteps(L.Callback):
    """Profile training steps ``skip`` .. ``skip + steps - 1`` with ``torch.profiler`` (CPU, plus CUDA when there is
    a GPU); one ``ProfilerStep#k`` span per step, from batch end to batch end after a device sync."""

    def __init__(self, trace_path: Path, skip: int, steps: int) -> None:
        from torch.profiler import ProfilerActivity, profile, schedule

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if CUDA else [])
        self.trace_path = trace_path
        self.prof = profile(
            activities=activities,
            schedule=schedule(wait=max(0, skip - 1), warmup=1 if skip else 0, active=steps, repeat=1),
            on_trace_ready=lambda p: p.export_chrome_trace(str(trace_path)),
            record_shapes=False,
            with_stack=False,
        )

    def on_train_start(self, trainer, module) -> None:
        self.prof.start()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        sync()
        self.prof.step()

    def on_train_end(self, trainer, module) -> None:
        sync()
        self.prof.stop()


def profile_step(cfg, trace_path: Path, skip: int, steps: int) -> tuple[dict, str]:
    """Profile ``steps`` Lightning steps after ``skip`` unprofiled ones; (breakdown, top-ops table)."""
    L.seed_everything(0, verbose=False)
    datamodule = build.build_datamodule(cfg)
    module = build.build_module(cfg, datamodule)
    trainer = build.build_trainer(
        cfg, cfg.paths.output_dir, enable_progress_bar=False, enable_model_summary=False
    )
    profiler = ProfileSteps(trace_path, skip, steps)
    trainer.callbacks.append(profiler)
    trainer.fit(module, datamodule=datamodule)
    opener = gzip.open if trace_path.suffix == ".gz" else open
    with opener(trace_path, "rt") as f:
        breakdown = trace_breakdown(json.load(f))
    sort = "self_cuda_time_total" if CUDA else "self_cpu_time_total"
    table = profiler.prof.key_averages().table(sort_by=sort, row_limit=12, max_name_column_width=60)
    return breakdown, table


def bench_profile(args) -> list[dict]:
    """The Lightning training step under ``torch.profiler``: a Chrome trace (open in https://ui.perfetto.dev or
    chrome://tracing) and the breakdown of ``trace_breakdown``, plus the top kernels / ops."""
    model, size, batch = train_cases(args)[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "_", device_name().lower()).strip("_")
    trace = Path(args.profile_trace) if args.profile_trace else out / f"trace_{slug}_{model}_b{batch}.json.gz"
    steps = args.profile_steps
    cfg = config(model, size, batch, f"trainer.max_steps={args.warmup + steps + 1}")
    breakdown, table = profile_step(cfg, trace, args.warmup, steps)
    console.print(table, soft_wrap=True, markup=False, highlight=False)
    ms = breakdown["step_ms"]
    parts = ", ".join(
        f"{k} {100 * breakdown[k]:.1f} % ({ms * breakdown[k]:.2f} ms)"
        for k in ("compute", "dispatch_gap", "host_outside_ops")
    )
    console.print(f"profiled step {ms:.2f} ms ({breakdown['timeline']} timeline): {parts}; trace {trace}")
    return [{"model": model, "image_size": size, "batch": batch, **breakdown, "trace": trace.name}]


# --- main ---------------------------------------------------------------------------------------------------------
SECTIONS = {
    "train": bench_train,
    "losses": bench_losses,
    "compile": bench_compile,
    "samplers": bench_samplers,
    "sampler-compile": bench_sampler_compile,
    "eval": bench_eval,
    "profile": bench_profile,
    "kmeans": bench_kmeans,
}
DEFAULT_SECTIONS = "train,losses,samplers,eval"  # compile, sampler-compile, profile, kmeans: on request (compilation, a trace)


def show(name: str, rows: list[dict]) -> None:
    table = Table(title=f"{name} ({device_name()})")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    for k in keys:
        table.add_column(k, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(
            *(
                f"{v:.3g}" if isinstance(v, float) else str(v if v is not None else "")
                for v in (r.get(k) for k in keys)
            )
        )
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--only", default=DEFAULT_SECTIONS, help="comma-separated sections: " + ", ".join(SECTIONS)
    )
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=20 if CUDA else 7, help="timed steps per training run")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (A B A B ...) per comparison")
    p.add_argument(
        "--model", default=None, help="train/losses/compile: only this model of the device's cases"
    )
    p.add_argument("--compile-warmup", type=int, default=10, help="untimed steps of a compiled run")
    p.add_argument(
        "--samplers", default="ddim-100,dpmpp2m-10,dpmpp2m-20", help="name-steps, first = baseline"
    )
    p.add_argument("--precisions", default=None, help="fp32,bf16 (default: both on CUDA, fp32 on CPU)")
    p.add_argument("--ddpm-steps", type=int, default=1000 if CUDA else 250, help="T of the DDPM chain")
    p.add_argument("--sample-batch", type=int, default=256 if CUDA else 8)
    p.add_argument("--fe-images", type=int, default=5000 if CUDA else 64)
    p.add_argument(
        "--pr-n", type=int, default=50000 if CUDA else 5000, help="N of the N x N precision/recall"
    )
    p.add_argument("--kmeans-n", type=int, default=100000 if CUDA else 10000, help="kmeans: rows clustered")
    p.add_argument("--kmeans-k", type=int, default=2000 if CUDA else 200, help="kmeans: clusters")
    p.add_argument(
        "--kmeans-sklearn", action="store_true", help="kmeans: sklearn too (CPU; minutes at paper size)"
    )
    p.add_argument("--profile-steps", type=int, default=5, help="profile: profiled steps (after --warmup)")
    p.add_argument(
        "--profile-trace",
        default=None,
        help="profile: Chrome trace path (.json or .json.gz; default in --out)",
    )
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument(
        "--threads", type=int, default=1, help="CPU intra-op threads (1: stable on a shared machine)"
    )
    args = p.parse_args(argv)
    for name in (
        "lightning",
        "lightning.pytorch",
        "lightning.fabric",
        "lightning.pytorch.utilities.rank_zero",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    if not CUDA:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    result = {
        "device": device_name(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "args": vars(args),
        "sections": {},
    }
    for name in args.only.split(","):
        t0 = time.perf_counter()
        result["sections"][name] = rows = SECTIONS[name](args)
        show(f"{name} [{time.perf_counter() - t0:.0f} s]", rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "_", result["device"].lower()).strip("_")
    path = out / f"{slug}.json"
    existing = json.loads(path.read_text()) if path.is_file() else {}
    existing_sections = existing.get("sections", {}) if existing.get("device") == result["device"] else {}
    result["sections"] = {**existing_sections, **result["sections"]}  # a partial run keeps the other sections
    path.write_text(json.dumps(result, indent=1))
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
