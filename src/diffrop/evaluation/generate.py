"""Sharded, resumable generation of an evaluation set (docs/design.md section 3).

Sample k has label ``labels[k]`` (``sample_labels``: balanced or the training mix) and seed ``seed + k``; its noise comes from its own generator
(``StackedGenerator``), so the images do not depend on the batch size, the shard size or how shards are split
over processes. Samples [i * shard_size, (i + 1) * shard_size) go to ``shard_{i:05d}.npz`` (uint8 NHWC images,
labels, seeds), written to a temporary name and renamed with ``os.replace``: a crash never leaves a half-written
shard, and a re-run skips every shard that exists. ``manifest.json`` records what the shards were drawn with,
so shards of another checkpoint or sampler setting are never mixed in silently.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.utils import save_image

from diffrop.diffusion.denoiser import Denoiser
from diffrop.diffusion.samplers.loop import StackedGenerator
from diffrop.diffusion.sampling import LABEL_MODES, SamplerSpec, sample
from diffrop.diffusion.schedule import NoiseSchedule
from diffrop.runtime.atomic_write import atomic_write
from diffrop.runtime.progress import ticking, track


def sample_labels(
    num_samples: int,
    num_classes: int,
    mode: str = "balanced",
    class_freq: Sequence[float] | Tensor | None = None,
) -> Tensor:
    """Labels of a generated set [N] (long).

    ``balanced``: sample k gets class k % C (exactly balanced when C divides N; docs/design.md section 3).
    ``train``: class counts follow the training label frequencies by largest-remainder allocation of N
    (deterministic; ties go to the lower class index), interleaved so that any prefix is close to the same mix:
    the i-th sample of class c sits at position key (i + 1/2) / n_c, classes ordered by key then index.
    """
    if num_samples <= 0 or num_classes <= 0:
        raise ValueError(f"need num_samples > 0 and num_classes > 0, got {num_samples}, {num_classes}")
    if mode == "balanced":
        return torch.arange(num_samples) % num_classes
    if mode != "train":
        raise ValueError(f"sampler.labels={mode!r} is not one of {list(LABEL_MODES)}")
    if class_freq is None:
        raise ValueError("sampler.labels=train needs the training class frequencies")
    freq = np.asarray(torch.as_tensor(class_freq, dtype=torch.float64), dtype=np.float64)
    if freq.shape != (num_classes,) or (freq < 0).any() or freq.sum() <= 0:
        raise ValueError(
            f"class_freq must be {num_classes} non-negative numbers with a positive sum, got {freq}"
        )
    quota = freq / freq.sum() * num_samples
    counts = np.floor(quota).astype(np.int64)
    remainder_order = sorted(range(num_classes), key=lambda c: (-(quota[c] - counts[c]), c))
    counts[remainder_order[: num_samples - counts.sum()]] += 1
    labels = np.repeat(np.arange(num_classes), counts)
    keys = np.concatenate([(np.arange(n) + 0.5) / n for n in counts if n > 0])
    return torch.as_tensor(labels[np.lexsort((labels, keys))], dtype=torch.long)


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] float -> [0, 255] uint8."""
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def sample_images(
    net: Denoiser,
    schedule: NoiseSchedule,
    labels: Tensor,
    seeds: Tensor,
    spec: SamplerSpec,
    device: str | torch.device = "cpu",
) -> Tensor:
    """uint8 images [N, C, H, W] for ``labels`` [N] with per-sample ``seeds`` [N], in batches of spec.batch_size.

    With ``spec.compile`` a short last batch is padded to the full batch size (extra rows with their own seeds,
    dropped afterwards), so a compiled network sees one shape; each row depends only on its own seed.
    """
    device = torch.device(device)
    shape = (net.in_channels, net.image_size, net.image_size)
    out = []
    for y, s in zip(labels.split(spec.batch_size), seeds.split(spec.batch_size), strict=True):
        n = len(y)
        if spec.compile and n < spec.batch_size:
            pad = spec.batch_size - n
            y, s = torch.cat([y, y[-1:].expand(pad)]), torch.cat([s, s[-1] + 1 + torch.arange(pad)])
        gen = StackedGenerator(s.tolist(), device)
        x = sample(net, schedule, y.to(device), (len(y), *shape), spec, gen)
        out.append(to_uint8(x[:n]).cpu())
    return torch.cat(out)


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """``write(file)`` into a temporary file next to ``path``, then rename it onto ``path``."""
    with atomic_write(path, mode) as f:
        write(f)


def shard_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"shard_{index:05d}.npz"


def check_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` on first use; afterwards refuse to resume shards drawn with other settings."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "manifest.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored != manifest:
            diff = {
                k: (stored.get(k), manifest.get(k))
                for k in manifest.keys() | stored.keys()
                if stored.get(k) != manifest.get(k)
            }
            raise ValueError(
                f"{out_dir} holds samples drawn with other settings {{key: (stored, now)}} = {diff}; "
                "delete that folder (or set eval.overwrite=true) to draw new samples"
            )
        return
    _atomic_write(path, lambda f: f.write(json.dumps(manifest, indent=2)), "w")


def generate(
    net: Denoiser,
    schedule: NoiseSchedule,
    labels: Tensor,
    out_dir: str | Path,
    spec: SamplerSpec,
    *,
    seed: int = 0,
    shard_size: int = 1000,
    device: str | torch.device = "cpu",
    rank: int = 0,
    world_size: int = 1,
    manifest: dict[str, Any] | None = None,
    progress: bool = True,
) -> list[Path]:
    """Draw every missing shard this rank owns (shards i with i % world_size == rank); returns all shard paths."""
    out_dir = Path(out_dir)
    if shard_size <= 0:
        raise ValueError(f"eval.shard_size must be > 0, got {shard_size}")
    check_manifest(
        out_dir,
        {
            "num_samples": len(labels),
            "seed": seed,
            "shard_size": shard_size,
            "sampler": spec.describe(),
            "labels_sha": _digest(labels),
            **(manifest or {}),
        },
    )
    num_shards = (len(labels) + shard_size - 1) // shard_size
    paths = [shard_path(out_dir, i) for i in range(num_shards)]
    todo = [i for i in range(rank, num_shards, world_size) if not paths[i].is_file()]
    # batches, not shards, so that progress moves within a shard: the same batches sample_images would draw
    batches = [(i, a, min(a + spec.batch_size, (i + 1) * shard_size, len(labels)))
               for i in todo for a in range(i * shard_size, min((i + 1) * shard_size, len(labels)), spec.batch_size)]  # fmt: skip
    total = sum(b - a for _, a, b in batches)
    description = f"sampling {total:,} images ({len(todo)} shards)"
    steps = track(batches, description, total, size=lambda c: c[2] - c[1], disable=not progress or not todo,
                  rank=rank)  # fmt: skip
    drawn: list[Tensor] = []
    batch = ["first batch"]  # a batch of a long sampler can take minutes: ``ticking`` says which one runs
    for i, a, b in steps:  # rank 0 reports; the other ranks draw theirs quietly
        seeds = torch.arange(a, b) + seed
        batch[0] = f"images {a}-{b - 1}"
        with ticking(lambda: f"{description}: {batch[0]}, {spec.steps} steps each", enabled=progress):
            drawn.append(sample_images(net, schedule, labels[a:b], seeds, spec, device))
        lo, hi = i * shard_size, min((i + 1) * shard_size, len(labels))
        if b < hi:
            continue
        arrays = {
            "images": torch.cat(drawn).permute(0, 2, 3, 1).numpy(),
            "labels": labels[lo:hi].numpy(),
            "seeds": (torch.arange(lo, hi) + seed).numpy(),
        }
        drawn = []
        _atomic_write(paths[i], lambda f, a=arrays: np.savez(f, **a))
    return paths


def _digest(labels: Tensor) -> str:
    return hashlib.sha1(labels.cpu().numpy().astype(np.int64).tobytes()).hexdigest()[:12]


def wait_for_shards(paths: list[Path], timeout_s: float = 24 * 3600, poll_s: float = 10.0) -> None:
    """Block until every shard exists (other ranks draw theirs); a clear error after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while missing := [p for p in paths if not p.is_file()]:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{len(missing)} shards still missing after {timeout_s:.0f} s, e.g. {missing[0]}"
            )
        time.sleep(poll_s)


def merge_shards(paths: list[Path], out_path: str | Path) -> tuple[Tensor, Tensor, Tensor]:
    """Concatenate the shards into ``out_path`` (.npz: images NHWC uint8, labels, seeds); returns
    (images NCHW uint8, labels, seeds) as tensors."""
    parts = []
    for p in paths:
        with np.load(p) as f:
            parts.append((f["images"], f["labels"], f["seeds"]))
    images, labels, seeds = (np.concatenate(a) for a in zip(*parts, strict=True))
    out_path = Path(out_path)
    _atomic_write(out_path, lambda f: np.savez(f, images=images, labels=labels, seeds=seeds))
    return (
        torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        torch.from_numpy(labels),
        torch.from_numpy(seeds),
    )


def save_grid(
    images: Tensor, labels: Tensor, path: str | Path, per_class: int = 10, max_classes: int = 10
) -> Path:
    """PNG with one row per class (the first ``per_class`` samples of each of the first ``max_classes`` classes)."""
    rows = []
    for c in labels.unique().tolist()[:max_classes]:
        picked = images[labels == c][:per_class]
        pad = images.new_zeros((per_class - len(picked), *images.shape[1:]))
        rows.append(torch.cat([picked, pad]))
    grid = torch.cat(rows).float() / 255
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path, nrow=per_class)
    return path
