"""A cheap FID during training (issue 4): every K steps, FID of a few thousand samples of the EMA network, drawn
with the run's ``sampler`` group, against the cached reference features of the balanced training set, logged as
``val/fid`` in the row of the batch just trained (after k steps: ``step`` k - 1, beside that step's ``train/loss``,
so a run's metrics.csv ends at ``max_steps - 1`` with or without it).

Same protocol as ``src/eval.py`` at a smaller scale (exactly balanced labels, per-sample seeds 0..N-1, so the
curve compares the same noise at every step); its numbers are biased upwards by the small N, so compare them
with each other, not with 50k-sample FIDs. Rank 0 computes while the other ranks wait at the next collective.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from diffrop.diffusion.sampling import SamplerSpec
from diffrop.evaluation import reference_set
from diffrop.evaluation.generate import sample_images, sample_labels
from diffrop.evaluation.metrics import ReferenceCache, feature_stats, frechet_distance
from diffrop.training.lightning_internals import logging_step


class PeriodicFID(L.Callback):
    def __init__(
        self,
        sampler: SamplerSpec,
        *,
        every_n_steps: int,
        num_samples: int,
        seed: int,
        sampler_overrides: dict[str, Any] | None,
        extractor: str,
        inception_weights: str | None,
        feature_batch_size: int,
        reference_cache: str,
        reference_per_class: int | None,
    ) -> None:
        """The feature settings are eval's (configs/features/default.yaml): same extractor, same reference cache."""
        self.every_n_steps, self.num_samples, self.seed = every_n_steps, num_samples, seed
        # the run's sampler group (build.build_callbacks), with this callback's overrides (a cheaper proxy)
        self.spec = dataclasses.replace(sampler, **(sampler_overrides or {}))
        self.kind, self.weights, self.reference_cache = extractor, inception_weights, Path(reference_cache)
        self.reference_per_class, self.feature_batch_size = reference_per_class, feature_batch_size
        self._extractor: reference_set.Extractor | None = None
        self._reference: tuple | None = None

    @rank_zero_only
    def prepare(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """Build the extractor and load (or compute once) the reference statistics; fails fast on missing weights."""
        self._extractor = reference_set.build_extractor(self.kind, self.weights, module.device)
        cache = ReferenceCache(self.reference_cache)
        _, _, key = reference_set.reference_features(
            trainer.datamodule,
            self._extractor,
            cache,
            self.reference_per_class,
            self.feature_batch_size,
            False,
        )
        self._reference = cache.stats(key)

    @rank_zero_only
    def compute(self, trainer: L.Trainer, module: L.LightningModule) -> float:
        net = module.ema
        labels = sample_labels(self.num_samples, net.num_classes)
        seeds = torch.arange(self.num_samples) + self.seed
        images = sample_images(net, module.schedule, labels, seeds, self.spec, module.device)
        features, _ = self._extractor.extract(
            reference_set.rgb(images), self.feature_batch_size, progress=False
        )
        fid = frechet_distance(*feature_stats(features), *self._reference)
        for logger in trainer.loggers:  # in the row of the batch just trained, as Lightning logs
            logger.log_metrics({"val/fid": fid}, step=logging_step(trainer))
        trainer.callback_metrics["val/fid"] = torch.tensor(fid)
        return fid

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.every_n_steps:
            self.spec.timesteps(module.schedule)  # a sampler that does not fit the schedule fails now
            self.prepare(trainer, module)
            for logger in trainer.loggers:  # the run's summary shows the best FID, not the last one
                if isinstance(logger, WandbLogger):
                    logger.experiment.define_metric(
                        "val/fid", summary="min", step_metric="trainer/global_step"
                    )

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.compute(trainer, module)
