"""Every name this package takes from Lightning's private API, in one place (lightning is pinned in pyproject.toml).

A Lightning upgrade that moves one of these breaks this module's imports, not five modules'. Kept because no
public API does the same: the logging-step rule and counter, the local-path test of the checkpoint I/O, and the CSV
writer type (``training.loggers`` also overrides two private members of its subclass, ``_fs`` and
``_check_log_dir_exists``).
"""

from __future__ import annotations

import lightning as L
from lightning.fabric.loggers.csv_logs import _ExperimentWriter as FabricCsvWriter
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol as is_local_file_protocol

__all__ = [
    "FabricCsvWriter",
    "is_local_file_protocol",
    "logging_step",
    "logs_this_step",
]


def logs_this_step(trainer: L.Trainer) -> bool:
    """Lightning writes logged values to the loggers at this step (its own rule: every ``log_every_n_steps``
    batches, and the steps ``LogFirstAndLastStep`` adds)."""
    return trainer._logger_connector.should_update_logs


def logging_step(trainer: L.Trainer) -> int:
    """The ``step`` Lightning writes this batch's logged values under (its batches-stepped counter, one behind
    ``global_step`` inside ``on_train_batch_end``): values a callback logs there share the batch's row."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped
