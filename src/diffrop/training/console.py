"""Quiet third-party console messages that ask nothing of a DiffROP user, so the first screen of a run shows
what does. Each filter matches one message by its text, and only where it is noise:

- Lightning's LitLogger advertisement ("Tip: ... try installing [litlogger]"), printed on every Trainer;
- Lightning's "Trainer already configured with model summary callbacks" (our config adds a rich summary on purpose);
- Lightning's own use of a torch API that torch deprecated ("`isinstance(treespec, LeafSpec)` is deprecated",
  from ``lightning.pytorch.utilities._pytree``): nothing a user can change;
- Lightning's "The `srun` command is available on your system but is not used" hint, but only outside a SLURM
  job: inside an allocation a missing ``srun`` really can hang a multi-process run, so the hint stays.

(W&B's "The anonymous setting has no effect" warning is fixed at its cause in ``diffrop.training.loggers.WandbLogger``.)
"""

from __future__ import annotations

import logging
import os
import warnings

from lightning.fabric.utilities.warnings import PossibleUserWarning

# rank_zero_info() writes through this logger (lightning.pytorch re-points lightning_utilities' to it)
LIGHTNING_INFO_LOGGER = "lightning.pytorch.utilities.rank_zero"
NOISE = (
    "try installing [litlogger](",
    "Trainer already configured with model summary callbacks",
)
SRUN_HINT = r"The `srun` command is available on your system but is not used"
PYTREE = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


def _not_noise(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(text in message for text in NOISE)


def quiet_third_party_noise() -> None:
    """Install the filters above (idempotent). Call before building the Trainer."""
    logging.getLogger(LIGHTNING_INFO_LOGGER).addFilter(_not_noise)
    warnings.filterwarnings("ignore", message=PYTREE, module=r"lightning\.pytorch\.utilities\._pytree")
    if "SLURM_JOB_ID" not in os.environ:
        warnings.filterwarnings("ignore", message=SRUN_HINT, category=PossibleUserWarning)
