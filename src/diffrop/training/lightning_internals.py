"""Every name this package takes from Lightning's private API, in one place (lightning is pinned in pyproject.toml).

A Lightning upgrade that moves one of these breaks this module's imports, not five modules'. Kept because no
public API does the same: the logging-step rule, the local-path test of the checkpoint I/O, and the CSV writer type (``training.loggers`` also overrides two
private members of its subclass, ``_fs`` and ``_check_log_dir_exists``).
"""

from __future__ import annotations

import lightning as L
from lightning.fabric.loggers.csv_logs import _ExperimentWriter as FabricCsvWriter
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol as is_local_file_protocol

__all__ = [
    "FabricCsvWriter",
    "is_local_file_protocol",
    "logs_this_step",
]


def logs_this_step(trainer: L.Trainer) -> bool:
    """Lightning writes logged values to the loggers at this step (its own rule: every ``log_every_n_steps``
    batches, and the steps ``LogFirstAndLastStep`` adds)."""
    return trainer._logger_connector.should_update_logs
