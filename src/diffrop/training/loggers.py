"""Lightning's loggers, adjusted for DiffROP runs: a CSV logger that survives resuming (Lightning's ``CSVLogger``
deletes an existing metrics.csv when it starts) and a W&B logger without the deprecated ``anonymous`` setting."""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from diffrop.training.lightning_internals import FabricCsvWriter


class _AppendingWriter(ExperimentWriter):
    """Keeps earlier rows; Lightning's writer already rewrites the header when new columns appear."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        # keep the columns of the earlier run, else rewriting the header fails
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])

    def _check_log_dir_exists(self) -> None:
        pass


class ResumableCSVLogger(CSVLogger):
    @property
    def experiment(self) -> FabricCsvWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` minus ``anonymous=None`` in its ``wandb.init`` arguments.

    Lightning 2.6 always passes ``anonymous`` (None unless asked), and wandb >= 0.19 warns "The anonymous setting
    has no effect" whenever the key is present: noise on every run's first screen. ``anonymous=True`` still passes.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
