"""Evaluation of a trained model (docs/design.md section 3): reference features of the balanced training set (cached),
generated sets per sampler setting, every score of ``metrics.compute_all``, per-shot scores, optional generated-
sample class accuracy, and the guidance sweep of paper Fig. 4b. ``EvalSettings`` is the ``eval`` config node,
``Evaluator`` the whole evaluation; Hydra-free: ``src/eval.py`` builds the objects.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffrop.data.datamodule import LongTailDataModule
from diffrop.diffusion.denoiser import Denoiser
from diffrop.diffusion.sampling import SamplerSpec
from diffrop.diffusion.sampling_net import sampling_net
from diffrop.diffusion.schedule import NoiseSchedule
from diffrop.evaluation.classification import shot_accuracy
from diffrop.evaluation.generate import generate, merge_shards, sample_labels, save_grid, wait_for_shards
from diffrop.evaluation.metrics import (
    KMEANS_BACKENDS,
    MetricSettings,
    ReferenceCache,
    compute_all,
    make_extractor,
    make_key,
    per_class,
    weights_fingerprint,
)
from diffrop.evaluation.metrics.features import EXTRACTORS, FidHelperFeatures, InceptionFeatures
from diffrop.runtime.progress import emit, ticking

Extractor = InceptionFeatures | FidHelperFeatures


@dataclass(frozen=True)
class EvalSettings:
    """The whole ``eval`` config node, checked once here (configs/eval.yaml documents each key and holds its one
    default). What needs the data or the sampler (set sizes, steps) is checked by ``Evaluator`` on construction."""

    num_samples: int
    seed: int  # sample k has seed seed + k
    shard_size: int
    extractor: str  # EXTRACTORS
    inception_weights: str | None  # local weights file; None lets the library download (needs network)
    feature_batch_size: int
    reference_cache: str  # folder of the reference-feature cache (metrics.ReferenceCache)
    reference_per_class: int | None  # cap the reference set (first n of each class); None = all
    k: int
    is_splits: int
    prd_clusters_per_class: int
    prd_runs: int
    kmeans: str  # metrics.KMEANS_BACKENDS
    kid_subsets: int
    kid_subset_size: int
    guidance_sweep: list[float] | None  # one evaluation per w, the best FID kept (paper Fig. 4b)
    classifier_ckpt: str | None  # generated-sample accuracy (``load_classifier``)
    grid_per_class: int
    per_class_fid_min_samples: int
    overwrite: bool  # delete samples drawn with other settings instead of refusing
    progress: bool

    def __post_init__(self) -> None:
        positive = (
            "num_samples",
            "shard_size",
            "feature_batch_size",
            "k",
            "is_splits",
            "prd_clusters_per_class",
        )
        for name in (*positive, "prd_runs"):
            if getattr(self, name) <= 0:
                raise ValueError(f"eval.{name} must be > 0, got {getattr(self, name)}")
        if self.grid_per_class < 0:
            raise ValueError(f"eval.grid_per_class must be >= 0, got {self.grid_per_class}")
        if self.reference_per_class is not None and self.reference_per_class <= 0:
            raise ValueError(f"eval.reference_per_class must be > 0 or null, got {self.reference_per_class}")
        if self.kmeans not in KMEANS_BACKENDS:
            raise ValueError(f"eval.kmeans={self.kmeans!r} is not one of {list(KMEANS_BACKENDS)}")
        if self.extractor not in EXTRACTORS:
            raise ValueError(f"eval.extractor={self.extractor!r} is not one of {sorted(EXTRACTORS)}")

    @property
    def metrics(self) -> MetricSettings:
        """The values the scores read (``metrics.compute_all``)."""
        return MetricSettings(**{f.name: getattr(self, f.name) for f in fields(MetricSettings)})


def build_extractor(kind: str, weights_path: str | Path | None, device: str | torch.device) -> Extractor:
    """The Inception extractor (tests swap this function for a fake one); a failure is an
    ``InceptionWeightsError`` naming the offline routes."""
    return make_extractor(kind, weights_path, device)


def reference_images(datamodule: LongTailDataModule, per_class: int | None) -> tuple[Tensor, Tensor]:
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
    per_class: int | None,
    batch_size: int,
    progress: bool,
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

    with ticking(lambda: f"reference features ({extractor.name})", enabled=progress):
        features, stored_labels = cache.get_or_compute(key, compute)
    return features, stored_labels, key


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
    y = labels.cpu()
    num_classes = 1 + max(c for members in groups.values() for c in members)  # the groups cover every class
    per_class = [correct[y == c].mean().item() if (y == c).any() else None for c in range(num_classes)]
    return {
        "overall": correct.mean().item(),
        "per_shot": shot_accuracy(preds, y, groups),
        "per_class": per_class,
    }


def sample_dir(root: Path, spec: SamplerSpec, num_samples: int, seed: int) -> Path:
    return root / f"{spec.folder_name()}_n{num_samples}_seed{seed}"


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


class Evaluator:
    """One checkpoint's evaluation: for each sampler setting (``spec``, or one per w of ``eval.guidance_sweep``) a
    generated set drawn in resumable shards, scored against the reference features.

    Construction runs every check that needs the data or the sampler (steps, set sizes against the scores), for
    every setting of a sweep, before any slow work: a bad value costs seconds, not the minutes of reference
    features or sampling that come before its use. ``run`` then does the work; under torchrun every rank draws its
    shards and rank 0 scores.
    """

    def __init__(
        self,
        settings: EvalSettings,
        net: Denoiser,
        schedule: NoiseSchedule,
        spec: SamplerSpec,
        datamodule: LongTailDataModule,
        *,
        device: str | torch.device,
        rank: int,
        world_size: int,
    ) -> None:
        self.settings, self.datamodule = settings, datamodule
        self.device, self.rank, self.world_size = device, rank, world_size
        real_labels = reference_images(datamodule, settings.reference_per_class)[1]
        self.plan: list[tuple[SamplerSpec, Tensor]] = []  # (setting, the labels of its generated set)
        for s in sweep_specs(spec, settings.guidance_sweep):
            s.timesteps(schedule)  # the steps fit the checkpoint's T (raises before any slow work)
            labels = sample_labels(
                settings.num_samples, datamodule.num_classes, s.labels, datamodule.class_freq
            )
            self._check_sizes(labels, real_labels)
            self.plan.append((s, labels))
        self.net = sampling_net(net.to(device), spec, device)  # compiled once for the whole sweep, if asked
        self.schedule = schedule.to(device)

    def _check_sizes(self, labels: Tensor, real_labels: Tensor) -> None:
        """Fail before sampling when the set sizes cannot support the requested scores."""
        s, groups, num_classes = self.settings, self.datamodule.shot_groups, self.datamodule.num_classes
        n = min(len(labels), len(real_labels))
        clusters = s.prd_clusters_per_class * num_classes
        if clusters > 2 * n:
            raise ValueError(
                f"F_8 / F_1/8 cluster {n} generated + {n} reference features into {clusters} = "
                f"eval.prd_clusters_per_class ({s.prd_clusters_per_class}) x {num_classes} classes, more than the "
                f"{2 * n} points; raise eval.num_samples or lower eval.prd_clusters_per_class"
            )
        if len(labels) < s.is_splits:
            raise ValueError(f"eval.num_samples={len(labels)} is below eval.is_splits={s.is_splits}")
        for name, classes in groups.items():
            for what, y in (("generated", labels), ("reference", real_labels)):
                count = int(torch.isin(y, torch.as_tensor(list(classes))).sum())
                if count <= s.k:
                    raise ValueError(
                        f"shot group {name!r} has {count} {what} samples, need more than eval.k={s.k} for "
                        "per-shot precision / recall; raise eval.num_samples (or eval.reference_per_class)"
                    )

    def run(self, out_dir: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """Draw and score every setting into ``out_dir``/samples/step<N>; results.json's body without the checkpoint and
        config records (``combine`` of the runs, then ``extractor``, ``settings``, ``data``). None on ranks > 0.
        ``manifest`` (checkpoint path, step) goes into each shard's manifest: resuming never mixes checkpoints."""
        s = self.settings
        if self.rank != 0:
            for spec, labels in self.plan:
                self._draw(spec, labels, out_dir, manifest)
            return None
        extractor = build_extractor(s.extractor, s.inception_weights, self.device)
        classifier = load_classifier(s.classifier_ckpt, self.device) if s.classifier_ckpt else None
        real_feats, real_labels, ref_key = reference_features(
            self.datamodule, extractor, ReferenceCache(s.reference_cache), s.reference_per_class,
            s.feature_batch_size, s.progress,
        )  # fmt: skip
        runs = [
            self._score(spec, *self._draw(spec, labels, out_dir, manifest), real_feats, real_labels, extractor,
                        classifier)
            for spec, labels in self.plan
        ]  # fmt: skip
        return combine(runs, sweep=bool(s.guidance_sweep)) | {
            "extractor": {
                "kind": s.extractor,
                "name": extractor.name,
                "weights": s.inception_weights,
                "weights_fingerprint": weights_fingerprint(getattr(extractor, "weights_path", None)),
                "reference_key": ref_key,
                "reference_size": len(real_labels),
            },
            "settings": asdict(s),
            "data": self.datamodule.summary(),
        }

    def _draw(
        self, spec: SamplerSpec, labels: Tensor, out_dir: Path, manifest: dict[str, Any]
    ) -> tuple[Path, list[Path]]:
        """Draw this rank's missing shards of one setting: (its folder, every shard path)."""
        s = self.settings
        # per checkpoint step: evaluating a later checkpoint never replaces an earlier record's samples
        folder = sample_dir(
            out_dir / "samples" / f"step{manifest.get('global_step')}", spec, s.num_samples, s.seed
        )
        if s.overwrite and self.rank == 0 and folder.is_dir():
            for stale in [*folder.glob("shard_*.npz"), folder / "manifest.json", folder / "samples.npz"]:
                stale.unlink(missing_ok=True)
        shards = generate(
            self.net, self.schedule, labels, folder, spec, seed=s.seed, shard_size=s.shard_size,
            device=self.device, rank=self.rank, world_size=self.world_size, manifest=manifest, progress=s.progress,
        )  # fmt: skip
        return folder, shards

    def _score(
        self,
        spec: SamplerSpec,
        folder: Path,
        shards: list[Path],
        real_feats: Tensor,
        real_labels: Tensor,
        extractor: Extractor,
        classifier: torch.nn.Module | None,
    ) -> dict[str, Any]:
        """Once every rank's shards are in: the merged set and its grid, every score (``metrics.compute_all``),
        the per-class scores and, with a classifier, its accuracy."""
        s, num_classes, groups = self.settings, self.datamodule.num_classes, self.datamodule.shot_groups
        wait_for_shards(shards)
        images, fake_labels, _ = merge_shards(shards, folder / "samples.npz")
        save_grid(images, fake_labels, folder / "grid.png", per_class=s.grid_per_class)
        stage = ["features of the generated set"]  # what ``ticking`` names while a stage runs for minutes

        def begin(name: str) -> None:
            stage[0] = f"scoring: {name}"
            emit(stage[0])

        with ticking(lambda: stage[0], enabled=s.progress):
            fake_feats, fake_logits = extractor.extract(rgb(images), s.feature_batch_size, s.progress)
            real_feats = real_feats.to(
                fake_feats.device
            )  # the k-NN distances of precision / recall run on a GPU
            metrics = compute_all(
                real_feats, real_labels, fake_feats, fake_logits, fake_labels, groups, num_classes, s.metrics,
                stage=begin if s.progress else (lambda name: None),
            )  # fmt: skip
            if s.progress:
                begin("per class")
            classes = per_class(  # the per-class plot's data (diffrop.evaluation.plots.plot_per_class)
                real_feats, real_labels, fake_feats, fake_labels, num_classes, k=s.k,
                min_fid_samples=s.per_class_fid_min_samples,
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
