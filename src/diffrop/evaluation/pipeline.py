"""Evaluation of a trained model (docs/design.md section 3): reference features of the balanced training set (cached),
generated sets per sampler setting, every score of ``metrics.compute_all``, per-shot scores, optional generated-
sample class accuracy, and the guidance sweep of paper Fig. 4b. Hydra-free: ``src/eval.py`` builds the objects.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffrop.data.datamodule import LongTailDataModule
from diffrop.diffusion.denoiser import Denoiser
from diffrop.diffusion.sampling import SamplerSpec
from diffrop.diffusion.schedule import NoiseSchedule
from diffrop.evaluation.generate import generate, merge_shards, sample_labels, save_grid, wait_for_shards
from diffrop.evaluation.metrics import ReferenceCache, compute_all, make_extractor, make_key, per_class
from diffrop.evaluation.metrics.features import EXTRACTORS, FidHelperFeatures, InceptionFeatures
from diffrop.evaluation.metrics.scores import KMEANS_BACKENDS
from diffrop.runtime.progress import emit

Extractor = InceptionFeatures | FidHelperFeatures


@dataclass(frozen=True)
class EvalSettings:
    """The ``eval`` config node, minus what ``src/eval.py`` resolves itself (checkpoint, data, W&B)."""

    num_samples: int = 50000
    seed: int = 0  # sample k has seed seed + k
    shard_size: int = 1000
    extractor: str = "torch-fidelity"  # torch-fidelity | fid-helper
    inception_weights: str | None = None  # local weights file; None lets the library download (needs network)
    feature_batch_size: int = 100
    reference_per_class: int | None = None  # cap the reference set (first n of each class); None = all
    k: int = 5  # improved precision / recall neighbourhood
    is_splits: int = 10
    prd_clusters_per_class: int = 20  # F_8 / F_1/8 k-means clusters = this x C
    prd_runs: int = 10
    kmeans: str = "sklearn"  # F_8 / F_1/8 k-means: sklearn (the reference's) | torch (opt-in, GPU-fast)
    kid_subsets: int = 100  # KID: mean over this many random subset pairs ...
    kid_subset_size: int = 1000  # ... of this many rows each (capped at a per-shot group's size)
    grid_per_class: int = 10
    per_class_fid_min_samples: int = 500  # per-class FID only where both sides have this many samples
    overwrite: bool = False  # delete samples drawn with other settings instead of refusing


def build_extractor(kind: str, weights_path: str | Path | None, device: str | torch.device) -> Extractor:
    """The Inception extractor (tests swap this function for a fake one); a failure is an
    ``InceptionWeightsError`` naming the offline routes."""
    return make_extractor(kind, weights_path, device)


def reference_images(datamodule: LongTailDataModule, per_class: int | None = None) -> tuple[Tensor, Tensor]:
    """The balanced full training set (FID reference), optionally the first ``per_class`` images of each class."""
    full = datamodule.full_train_set()
    images, labels = full.images, full.labels
    if per_class is not None:
        keep = (
            torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in labels.unique()])
            .sort()
            .values
        )
        images, labels = images[keep], labels[keep]
    return images, labels


def reference_key(
    datamodule: LongTailDataModule, labels: Tensor, per_class: int | None, extractor: Extractor
) -> str:
    """Cache key: dataset, image size, class subset (all C classes or a per-class cap, and the set size), extractor
    and the weights file's fingerprint."""
    classes = f"c{datamodule.num_classes}" + ("" if per_class is None else f"x{per_class}")
    dataset = f"{datamodule.name}-{datamodule.source}-full-{datamodule.image_size}px-{classes}-n{len(labels)}"
    return make_key(dataset, extractor.name, getattr(extractor, "weights_path", None))


def rgb(images: Tensor) -> Tensor:
    """Grey images [N, 1, H, W] repeated to 3 channels for Inception."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def reference_features(
    datamodule: LongTailDataModule,
    extractor: Extractor,
    cache: ReferenceCache,
    per_class: int | None = None,
    batch_size: int = 100,
    progress: bool = True,
) -> tuple[Tensor, Tensor, str]:
    """(features [N, D], labels [N], cache key) of the reference set, computed once per key and stored."""
    images, labels = reference_images(datamodule, per_class)
    key = reference_key(datamodule, labels, per_class, extractor)

    def compute() -> tuple[Tensor, Tensor]:
        x = rgb(images)
        cap = "the whole" if per_class is None else f"at most {per_class} per class of the"
        print(
            f"reference set: {len(x):,} images ({cap} training set of {datamodule.name}, before the long-tail cut); "
            f"computing their "
            f"{extractor.name} features once, then cached in {cache.root} (eval.reference_per_class=<n> caps it)",
            flush=True,
        )
        if len(x) <= 2 * batch_size:  # two batches: nothing to estimate
            return extractor.extract(x, batch_size, progress)[0].cpu(), labels
        warm = extractor.extract(x[:batch_size], batch_size, False)[0].cpu()  # first call: set-up, not timed
        start = time.perf_counter()
        timed = extractor.extract(x[batch_size : 2 * batch_size], batch_size, False)[0].cpu()
        left = len(x) - 2 * batch_size
        print(
            f"  about {_duration((time.perf_counter() - start) / batch_size * left)} for the rest", flush=True
        )
        rest = extractor.extract(x[2 * batch_size :], batch_size, progress)[0].cpu()
        return torch.cat([warm, timed, rest]), labels

    features, stored_labels = cache.get_or_compute(key, compute)
    return features, stored_labels, key


def check_sizes(
    settings: EvalSettings,
    labels: Tensor,
    real_labels: Tensor,
    groups: Mapping[str, Sequence[int]],
    num_classes: int,
) -> None:
    """Fail before sampling when the set sizes cannot support the requested scores."""
    n = min(len(labels), len(real_labels))
    clusters = settings.prd_clusters_per_class * num_classes
    if clusters > 2 * n:
        raise ValueError(
            f"F_8 / F_1/8 cluster {n} generated + {n} reference features into {clusters} = "
            f"eval.prd_clusters_per_class ({settings.prd_clusters_per_class}) x {num_classes} classes, more than the "
            f"{2 * n} points; raise eval.num_samples or lower eval.prd_clusters_per_class"
        )
    if len(labels) < settings.is_splits:
        raise ValueError(f"eval.num_samples={len(labels)} is below eval.is_splits={settings.is_splits}")
    for name, classes in groups.items():
        for what, y in (("generated", labels), ("reference", real_labels)):
            count = int(torch.isin(y, torch.as_tensor(list(classes))).sum())
            if count <= settings.k:
                raise ValueError(
                    f"shot group {name!r} has {count} {what} samples, need more than eval.k={settings.k} for "
                    "per-shot precision / recall; raise eval.num_samples (or eval.reference_per_class)"
                )


def validate(
    settings: EvalSettings,
    specs: Sequence[SamplerSpec],
    datamodule: LongTailDataModule,
    real_labels: Tensor,
    num_timesteps: int,
) -> None:
    """Every check on the evaluation settings, for every sampler setting of a sweep, run before any feature
    extraction or generation: a bad value must cost seconds, not the minutes of work that come before its use.
    ``real_labels`` are the reference set's labels (``reference_images``; no features needed). The weights and
    classifier files are checked where they are loaded, which is before any slow work too."""
    positive = ("num_samples", "shard_size", "feature_batch_size", "k", "is_splits", "prd_clusters_per_class")
    for name in (*positive, "prd_runs"):
        if getattr(settings, name) <= 0:
            raise ValueError(f"eval.{name} must be > 0, got {getattr(settings, name)}")
    if settings.grid_per_class < 0:
        raise ValueError(f"eval.grid_per_class must be >= 0, got {settings.grid_per_class}")
    if settings.reference_per_class is not None and settings.reference_per_class <= 0:
        raise ValueError(f"eval.reference_per_class must be > 0 or null, got {settings.reference_per_class}")
    if settings.kmeans not in KMEANS_BACKENDS:
        raise ValueError(f"eval.kmeans={settings.kmeans!r} is not one of {list(KMEANS_BACKENDS)}")
    if settings.extractor not in EXTRACTORS:
        raise ValueError(f"eval.extractor={settings.extractor!r} is not one of {sorted(EXTRACTORS)}")
    for spec in specs:
        if spec.name == "ddpm" and spec.steps != num_timesteps:
            raise ValueError(
                f"sampler=ddpm walks all T={num_timesteps} steps (got sampler.steps={spec.steps}); "
                "use sampler=ddim for fewer steps"
            )
        if not 1 <= spec.steps <= num_timesteps:
            raise ValueError(f"sampler.steps must be in [1, {num_timesteps}], got {spec.steps}")
        labels = sample_labels(
            settings.num_samples, datamodule.num_classes, spec.labels, datamodule.class_freq
        )
        check_sizes(settings, labels, real_labels, datamodule.shot_groups, datamodule.num_classes)


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """A classifier file: TorchScript (``torch.jit.save``) or a whole pickled ``nn.Module`` (``torch.save(model)``),
    whose forward maps uint8 images [B, C, H, W] to logits [B, num_classes]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"eval.classifier_ckpt={path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is flagged deprecated
            return torch.jit.load(str(path), map_location=device).eval()
    except RuntimeError:
        model = torch.load(path, map_location=device, weights_only=False)
    if not isinstance(model, torch.nn.Module):
        raise ValueError(
            f"{path} is neither TorchScript nor a pickled nn.Module (got {type(model).__name__}); save the "
            "classifier with torch.jit.save(torch.jit.script(model), path) taking uint8 images to logits"
        )
    return model.eval()


@torch.no_grad()
def classify_accuracy(
    classifier: torch.nn.Module,
    images: Tensor,
    labels: Tensor,
    groups: Mapping[str, Sequence[int]],
    batch_size: int = 500,
) -> dict[str, Any]:
    """How often a class-c sample is recognised as c: {"overall": acc, "per_shot": {group: acc}, "per_class":
    [acc of class 0, ...]} (None for a class without samples)."""
    device = next(iter(classifier.parameters()), torch.empty(0)).device
    preds = torch.cat([classifier(b.to(device)).argmax(1).cpu() for b in images.split(batch_size)])
    correct = (preds == labels.cpu()).double()
    per_shot = {
        g: correct[torch.isin(labels.cpu(), torch.as_tensor(list(c)))].mean().item()
        for g, c in groups.items()
    }
    y = labels.cpu()
    num_classes = 1 + max(c for members in groups.values() for c in members)  # the groups cover every class
    per_class = [correct[y == c].mean().item() if (y == c).any() else None for c in range(num_classes)]
    return {"overall": correct.mean().item(), "per_shot": per_shot, "per_class": per_class}


def sample_dir(root: Path, spec: SamplerSpec, num_samples: int, seed: int) -> Path:
    eta = f"_eta{spec.eta:g}" if spec.name == "ddim" else ""
    precision = "" if spec.precision == "fp32" else f"_{spec.precision}"
    compiled = "_compiled" if spec.compile else ""
    return root / (
        f"{spec.name}{spec.steps}{eta}_w{spec.guidance:g}_{spec.labels}{precision}{compiled}"
        f"_n{num_samples}_seed{seed}"
    )


def evaluate_spec(
    net: Denoiser,
    schedule: NoiseSchedule,
    spec: SamplerSpec,
    *,
    settings: EvalSettings,
    datamodule: LongTailDataModule,
    real: tuple[Tensor, Tensor],
    extractor: Extractor,
    out_dir: Path,
    device: str | torch.device,
    manifest: dict[str, Any],
    classifier: torch.nn.Module | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> dict[str, Any] | None:
    """Generate (resumably) and score one sampler setting; ``None`` on ranks > 0, which only draw their shards."""
    num_classes, groups = datamodule.num_classes, datamodule.shot_groups
    labels = sample_labels(settings.num_samples, num_classes, spec.labels, datamodule.class_freq)
    check_sizes(settings, labels, real[1], groups, num_classes)
    folder = sample_dir(out_dir / "samples", spec, settings.num_samples, settings.seed)
    if settings.overwrite and rank == 0 and folder.is_dir():
        for stale in [*folder.glob("shard_*.npz"), folder / "manifest.json", folder / "samples.npz"]:
            stale.unlink(missing_ok=True)
    shards = generate(
        net,
        schedule,
        labels,
        folder,
        spec,
        seed=settings.seed,
        shard_size=settings.shard_size,
        device=device,
        rank=rank,
        world_size=world_size,
        manifest=manifest,
        progress=progress,
    )
    if rank != 0:
        return None
    wait_for_shards(shards)
    images, fake_labels, _ = merge_shards(shards, folder / "samples.npz")
    save_grid(images, fake_labels, folder / "grid.png", per_class=settings.grid_per_class)
    fake_feats, fake_logits = extractor.extract(rgb(images), settings.feature_batch_size, progress)
    metrics = compute_all(  # on the extractor's device: the k-NN distances of precision / recall run on a GPU
        real[0].to(fake_feats.device), real[1], fake_feats, fake_logits, fake_labels,
        groups, num_classes, k=settings.k, is_splits=settings.is_splits,
        prd_clusters_per_class=settings.prd_clusters_per_class, prd_runs=settings.prd_runs, seed=settings.seed,
        prd_kmeans=settings.kmeans,
        kid_subsets=settings.kid_subsets, kid_subset_size=settings.kid_subset_size,
        stage=(lambda name: emit(f"scoring: {name}")) if progress else (lambda name: None),
    )  # fmt: skip
    if progress:
        emit("scoring: per class")
    classes = per_class(  # the per-class plot's data (diffrop.evaluation.plots.plot_per_class)
        real[0].to(fake_feats.device), real[1], fake_feats, fake_labels, num_classes,
        k=settings.k, min_fid_samples=settings.per_class_fid_min_samples,
    )  # fmt: skip
    if classifier is not None:
        acc = classify_accuracy(classifier, images, fake_labels, groups)
        metrics["accuracy"] = acc["overall"]
        for group, value in acc["per_shot"].items():
            metrics["per_shot"][group]["accuracy"] = value
        classes["accuracy"] = acc["per_class"]
    return {
        "metrics": metrics,
        "per_class": classes,
        "sampler": spec.describe(),
        "num_samples": len(fake_labels),
        "label_counts": torch.bincount(fake_labels, minlength=num_classes).tolist(),
        "samples": str(folder / "samples.npz"),
    }


def sweep_specs(spec: SamplerSpec, guidance_sweep: Sequence[float] | None) -> list[SamplerSpec]:
    """One spec per w of ``eval.guidance_sweep`` (paper Fig. 4b), or just ``spec``."""
    return [replace(spec, guidance=float(w)) for w in guidance_sweep] if guidance_sweep else [spec]


def combine(runs: list[dict[str, Any]], sweep: bool) -> dict[str, Any]:
    """results.json body: the one run, or the best-FID run of a sweep plus ``guidance_sweep`` and ``best_w``."""
    best = min(runs, key=lambda r: r["metrics"]["fid"])
    out = dict(best)
    if sweep:
        out["guidance_sweep"] = [{"w": r["sampler"]["guidance_scale"], **r["metrics"]} for r in runs]
        out["best_w"] = best["sampler"]["guidance_scale"]
    return out
