"""The third-party noise filters of diffrop.runtime.console: each message goes where it is noise and stays where it is not."""

from __future__ import annotations

import logging
import warnings

import pytest
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.warnings import PossibleUserWarning

from diffrop.runtime.console import LIGHTNING_INFO_LOGGER, quiet_third_party_noise


@pytest.fixture
def srun_on_path(tmp_path, monkeypatch):
    srun = tmp_path / "srun"
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    for var in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(var, raising=False)


def _srun_hints() -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party_noise()
        SLURMEnvironment._validate_srun_used()  # what Lightning runs when it builds a Trainer
    return [w for w in caught if issubclass(w.category, PossibleUserWarning) and "srun" in str(w.message)]


def test_srun_hint_is_dropped_outside_slurm(srun_on_path):
    assert _srun_hints() == []


def test_srun_hint_stays_inside_a_slurm_job(srun_on_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")  # an allocation, but the command was not started with srun
    assert len(_srun_hints()) == 1


def test_litlogger_tip_is_dropped_and_other_lightning_info_kept():
    quiet_third_party_noise()
    logger = logging.getLogger(LIGHTNING_INFO_LOGGER)
    tip = "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger](https://x) to ..."
    kept = "GPU available: False, used: False"

    def record(message: str) -> logging.LogRecord:
        return logger.makeRecord(logger.name, logging.INFO, __file__, 1, message, (), None)

    assert not logger.filter(record(tip)) and logger.filter(record(kept))
