"""Section eval: Inception feature extraction, chunked precision / recall (in a child process, for its peak memory)
and KID."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

import torch

from benchmarks.timing import CUDA, median_time, timed


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
    from diffrop.evaluation.metrics import kernel_inception_distance

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
