"""The third-party noise filters of diffrop.training.console: each message goes where it is noise and stays where it is not."""

from __future__ import annotations

import logging
import warnings

import pytest
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.warnings import PossibleUserWarning

from diffrop.training.console import LIGHTNING_INFO_LOGGER, quiet_third_party_noise


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


def _pytree_warnings(quiet: bool) -> list[str]:
    from lightning.pytorch.utilities._pytree import _tree_flatten

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if quiet:
            quiet_third_party_noise()
        _tree_flatten(1.0)  # what Lightning's loops run on every batch
    return [str(w.message) for w in caught if "LeafSpec" in str(w.message)]


def test_lightnings_pytree_deprecation_is_dropped():
    assert _pytree_warnings(
        quiet=False
    )  # the message this filter is for (gone once Lightning stops using it)
    assert _pytree_warnings(quiet=True) == []


def test_model_summary_has_no_flops_column():
    """Lightning counts FLOPs only on an ``example_input_array`` (our module has none): a column of zeros."""
    from rich import get_console

    from diffrop.training.callbacks import ModelSummary

    data = [(" ", ["0"]), ("Name", ["net"]), ("Type", ["UNet"]), ("Params", ["653 K"]), ("Mode", ["train"]),
            ("FLOPs", ["0"])]  # fmt: skip
    with get_console().capture() as out:
        ModelSummary.summarize(data, 2_000_000, 1_000_000, 8.0, {"train": 3, "eval": 2}, 0)
    text = out.get()
    assert "FLOPs" not in text and "653 K" in text and "UNet" in text
    assert "1.0 M trainable, 1.0 M non-trainable (8.0 MB)" in text
    assert "3 in train mode, 2 in eval mode" in text
