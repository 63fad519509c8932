"""Evaluation of a trained model (docs/design.md section 3), the orchestrator: settings -> sampler settings (one
per w of a guidance sweep, paper Fig. 4b) -> generated sets -> features -> scores -> results.json's body.

The pieces live beside it: ``settings`` (the ``eval`` node), ``reference_set`` (the reference features),
``generate`` (resumable shards), ``scoring`` (one set's scores), ``metrics`` (the scores, each with its own
settings and checks), ``classification`` (the classifier's accuracy). Hydra-free: ``src/eval.py`` builds the objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffrop.data.datamodule import LongTailDataModule
from diffrop.diffusion.denoiser import Denoiser
from diffrop.diffusion.sampling import SamplerSpec
from diffrop.diffusion.sampling_net import sampling_net
from diffrop.diffusion.schedule import NoiseSchedule
from diffrop.evaluation import reference_set
from diffrop.evaluation.classification import load_classifier
from diffrop.evaluation.generate import generate, sample_labels
from diffrop.evaluation.metrics import ReferenceCache, Sizes, check_all, weights_fingerprint
from diffrop.evaluation.scoring import score_set
from diffrop.evaluation.settings import EvalSettings


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

    Construction runs every check that needs the data or the sampler (its steps, each metric's ``check`` of the set
    sizes), for every setting of a sweep, before any slow work: a bad value costs seconds, not the minutes of
    reference features or sampling before its use. ``run`` does the work; under torchrun every rank draws its
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
        self.settings, self.datamodule, dm = settings, datamodule, datamodule
        self.device, self.rank, self.world_size = device, rank, world_size
        real_labels = reference_set.reference_images(dm, settings.reference_per_class)[1]
        self.plan: list[tuple[SamplerSpec, Tensor]] = []  # (setting, the labels of its generated set)
        for s in sweep_specs(spec, settings.guidance_sweep):
            s.timesteps(schedule)  # the steps fit the checkpoint's T (raises before any slow work)
            labels = sample_labels(settings.num_samples, dm.num_classes, s.labels, dm.class_freq)
            check_all(settings.metrics, Sizes.of(labels, real_labels, dm.shot_groups, dm.num_classes))
            self.plan.append((s, labels))
        self.net = sampling_net(net.to(device), spec, device)  # compiled once for the whole sweep, if asked
        self.schedule = schedule.to(device)

    def run(self, out_dir: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """Draw and score every setting into ``out_dir``/samples/step<N>; results.json's body without the checkpoint
        and config records (``combine`` of the runs, then ``extractor``, ``settings``, ``data``). None on ranks > 0.
        ``manifest`` (checkpoint path, step) goes into each shard's manifest: resuming never mixes checkpoints."""
        s, dm = self.settings, self.datamodule
        if self.rank != 0:
            for spec, labels in self.plan:
                self._draw(spec, labels, out_dir, manifest)
            return None
        extractor = reference_set.build_extractor(s.extractor, s.inception_weights, self.device)
        classifier = load_classifier(s.classifier_ckpt, self.device) if s.classifier_ckpt else None
        real_feats, real_labels, ref_key = reference_set.reference_features(
            dm, extractor, ReferenceCache(s.reference_cache), s.reference_per_class, s.feature_batch_size, s.progress
        )  # fmt: skip
        runs = [
            score_set(s, spec, *self._draw(spec, labels, out_dir, manifest), (real_feats, real_labels), extractor,
                      classifier, dm.shot_groups, dm.num_classes)
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
            "data": dm.summary(),
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
