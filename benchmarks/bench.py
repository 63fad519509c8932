"""DiffROP benchmarks (numbers, not pass/fail tests): framework overhead, loss-term cost, samplers, evaluation.

    python benchmarks/bench.py                       # every section, on the GPU if there is one
    python benchmarks/bench.py --only train,losses --reps 10

Prints rich tables and writes ``benchmarks/results/<device>.json``; this file is the driver, each section a module of
the package ``benchmarks`` (``timing``: how everything is measured; ``harness``: the benchmarked training run). A
training-step time is the median of ``--reps`` steps after ``--warmup`` untimed ones of one short run; on a GPU each
measurement ends with ``torch.cuda.synchronize()``. Everything that is compared is measured interleaved:
``--rounds`` rounds of A B C A B C ..., and a ratio is the median over rounds of the paired per-round ratios, so that
the drift of a shared machine (another job starting, thermal limits) hits both sides of a pair alike and cancels.

1. train (``overhead``): one training step of our LightningModule under the Trainer (CSV logger, LR monitor,
   checkpoint callback, NaN guard, EMA; no progress bar or sample grid) vs a minimal plain-PyTorch loop of the same
   network, loss (eps-MSE), fused Adam, clipping and foreach EMA on the same device-resident batches. Target: < 5 %.
2. losses (``losses``): step time of ddpm, pcl_* and cbdm relative to ddpm (PCL with eq12 / batch pairs: < 3 % over
   DDPM; the default partner pairing adds one forward and backward, like CBDM).
3. compile (``compiled``): the Lightning step eager vs ``model.compile=true`` (each round compiles afresh: give it
   warm-up).
4. samplers (``sampling``): images/s of ``--samplers`` (default DDIM-100, DPM-Solver++(2M)-10 / 20; ``ddpm-1000`` on
   request), unguided and guided (one batched forward of 2B images, so guided should cost < 2x), fp32 and (CUDA)
   bf16; speed-ups vs DDIM-100 and the minutes 50k samples take. sampler-compile (on request): the last of them
   guided, eager vs ``sampler.compile=true`` (CUDA graphs on a GPU), images/s and the largest pixel difference.
5. eval (``evaluation``): Inception feature extraction images/s (random weights in torch-fidelity's format: the real
   ones may be absent), time / peak memory of improved precision-recall on N x N features (chunked, in a child
   process: ``_worker.py``), and KID on them.
6. kmeans (``kmeans``, on request): one F_8 / F_1/8 k-means run (torch on the device; sklearn with
   ``--kmeans-sklearn``).
7. profile (``profiling``, on request): ``--profile-steps`` Lightning training steps under ``torch.profiler`` (CPU +
   CUDA activities): a Chrome trace, the top kernels / ops, and where the step's wall time goes: GPU kernels (CPU:
   ops), the GPU idle while the host dispatches (launch overhead), and host-only time (Python, hooks, data).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if (
    str(REPO) not in sys.path
):  # `python benchmarks/bench.py`: the sections are the package benchmarks/ beside this file
    sys.path.insert(0, str(REPO))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.compiled import bench_compile  # noqa: E402
from benchmarks.evaluation import bench_eval  # noqa: E402
from benchmarks.kmeans import bench_kmeans  # noqa: E402
from benchmarks.losses import bench_losses  # noqa: E402
from benchmarks.overhead import bench_train  # noqa: E402
from benchmarks.profiling import bench_profile  # noqa: E402
from benchmarks.sampling import bench_sampler_compile, bench_samplers  # noqa: E402
from benchmarks.timing import CUDA, device_name, device_slug  # noqa: E402

console = Console(width=140)

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
    path = out / f"{device_slug()}.json"
    existing = json.loads(path.read_text()) if path.is_file() else {}
    existing_sections = existing.get("sections", {}) if existing.get("device") == result["device"] else {}
    result["sections"] = {**existing_sections, **result["sections"]}  # a partial run keeps the other sections
    path.write_text(json.dumps(result, indent=1))
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
