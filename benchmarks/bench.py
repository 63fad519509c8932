"""DiffROP benchmarks (numbers, not pass/fail tests): framework overhead, loss-term cost, samplers, evaluation.

    python benchmarks/bench.py                       # every section, on the GPU if there is one
    python benchmarks/bench.py --only train,losses --reps 10

Prints rich tables and writes ``benchmarks/results/<device>.json``. Every time is the median of ``--reps``
measurements after ``--warmup`` untimed ones; on a GPU each measurement ends with ``torch.cuda.synchronize()``.

1. train: one training step of our LightningModule under the Trainer (CSV logger, LR monitor, checkpoint
   callback, NaN guard, EMA; no progress bar or sample grid) vs a minimal plain-PyTorch loop of the same network,
   loss (eps-MSE), fused Adam, clipping and foreach EMA on the same device-resident batches. Target: < 5 %.
2. losses: step time of ddpm, pcl_* and cbdm relative to ddpm (PCL target: < 3 % over DDPM).
3. samplers: images/s of DDPM (ancestral, all T steps) and DDIM-100, unguided and guided (one batched forward of
   2B images, so guided should cost < 2x).
4. eval: Inception feature extraction images/s (random weights in torch-fidelity's format: the real ones may be
   absent) and time / peak memory of improved precision-recall on N x N features (chunked).
"""

from __future__ import annotations

import argparse
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
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from unittest import mock

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir  # noqa: TID251 (a benchmark entry point, like src/train.py)
from hydra.core.hydra_config import HydraConfig  # noqa: TID251
from hydra.utils import instantiate  # noqa: TID251
from omegaconf import open_dict
from rich.console import Console
from rich.table import Table

from diffrop import build
from diffrop.diffusion.sampling import ddim_sample, ddpm_sample

REPO = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
console = Console(width=140)

# (model config, image size, batch) per device kind: the default net at batch 128 on a GPU; CPU-sized batches on CPU
TRAIN_CASES = {"cuda": [("ddpm_unet", 32, 128)], "cpu": [("tiny", 16, 32), ("ddpm_unet", 32, 8)]}
LOSSES = ["ddpm", "pcl_exp", "pcl_hinge", "pcl_neg_l2", "pcl_recip", "cbdm", "cbdm_pcl_exp"]


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


def bench_train(args) -> list[dict]:
    rows = []
    for model, size, batch in TRAIN_CASES["cuda" if CUDA else "cpu"]:
        n = args.warmup + args.reps
        cfg = config(model, size, batch, f"trainer.max_steps={n + 1}")
        ours = lightning_step(cfg, args.warmup, args.reps)
        plain = plain_step(cfg, args.warmup, args.reps)
        rows.append(
            {
                "model": model,
                "image_size": size,
                "batch": batch,
                "lightning_ms": 1e3 * ours,
                "plain_ms": 1e3 * plain,
                "overhead_pct": 100 * (ours / plain - 1),
                "target_pct": 5.0,
            }
        )
    return rows


def bench_losses(args) -> list[dict]:
    model, size, batch = TRAIN_CASES["cuda" if CUDA else "cpu"][0]
    n = args.warmup + args.reps
    times = {}
    for loss in LOSSES:
        cfg = config(model, size, batch, f"loss={loss}", f"trainer.max_steps={n + 1}")
        times[loss] = lightning_step(cfg, args.warmup, args.reps)
    base = times["ddpm"]
    return [
        {
            "loss": k,
            "model": model,
            "batch": batch,
            "ms": 1e3 * v,
            "ratio_vs_ddpm": v / base,
            "target_ratio": 1.03 if k.startswith("pcl") else None,
        }
        for k, v in times.items()
    ]


# --- 3: samplers --------------------------------------------------------------------------------------------------
def bench_samplers(args) -> list[dict]:
    model, size, _ = TRAIN_CASES["cuda" if CUDA else "cpu"][0]
    cfg = config(model, size, 8)
    device = torch.device("cuda" if CUDA else "cpu")
    net = build.build_net(cfg, 10).to(device).eval()
    schedule = instantiate(cfg.diffusion).to(device)  # T = 1000, which DDIM subsamples
    short = instantiate(cfg.diffusion, num_steps=args.ddpm_steps).to(
        device
    )  # DDPM visits every step of its T
    b = args.sample_batch
    y = torch.arange(b, device=device) % 10
    shape = (b, 3, size, size)
    rows = []
    for guidance in (0.0, 1.0):
        for name, fn in [
            (f"DDPM-{args.ddpm_steps}", lambda g=guidance: ddpm_sample(net, short, y, shape, guidance=g)),
            ("DDIM-100", lambda g=guidance: ddim_sample(net, schedule, y, shape, steps=100, guidance=g)),
        ]:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=CUDA):
                sec = median_time(fn, 1, max(1, args.reps // 3))
            rows.append(
                {"sampler": name, "guidance": guidance, "model": model, "batch": b, "images_per_s": b / sec}
            )
    for row in rows:
        if row["guidance"]:
            base = next(r for r in rows if r["sampler"] == row["sampler"] and not r["guidance"])
            row["guided_cost_x"] = base["images_per_s"] / row["images_per_s"]
    return rows


# --- 4: evaluation ------------------------------------------------------------------------------------------------
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


PR_CHILD = """
import json, sys, time, torch
from diffrop.metrics.scores import precision_recall
n, chunk = int(sys.argv[1]), int(sys.argv[2])
g = torch.Generator().manual_seed(0)
dev = "cuda" if torch.cuda.is_available() else "cpu"
real, fake = (torch.randn(n, 2048, generator=g).to(dev) for _ in range(2))
def rss(field):  # kB, Linux
    return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1])
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
base = rss("VmRSS")
if dev == "cuda":
    torch.cuda.reset_peak_memory_stats(); start = torch.cuda.memory_allocated()
t0 = time.perf_counter()
precision_recall(real, fake, k=5, chunk=chunk, dtype=torch.float32)
if dev == "cuda":
    torch.cuda.synchronize()
sec = time.perf_counter() - t0
peak = (torch.cuda.max_memory_allocated() - start) if dev == "cuda" else \
    (rss("VmHWM") - base) * 1024
print(json.dumps({"seconds": sec, "peak_extra_bytes": peak}))
"""


def bench_eval(args) -> list[dict]:
    from diffrop.metrics.features import make_extractor

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
    cmd = [sys.executable, "-c", PR_CHILD, str(args.pr_n), str(chunk)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(out.stderr)
    pr = json.loads(out.stdout.strip().splitlines()[-1])
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


# --- main ---------------------------------------------------------------------------------------------------------
SECTIONS = {"train": bench_train, "losses": bench_losses, "samplers": bench_samplers, "eval": bench_eval}


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
        "--only", default=",".join(SECTIONS), help="comma-separated sections: " + ", ".join(SECTIONS)
    )
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=20 if CUDA else 7)
    p.add_argument("--ddpm-steps", type=int, default=1000 if CUDA else 250, help="T of the DDPM chain")
    p.add_argument("--sample-batch", type=int, default=256 if CUDA else 8)
    p.add_argument("--fe-images", type=int, default=5000 if CUDA else 64)
    p.add_argument(
        "--pr-n", type=int, default=50000 if CUDA else 5000, help="N of the N x N precision/recall"
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
