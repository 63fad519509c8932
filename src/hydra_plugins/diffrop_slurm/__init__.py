"""Hydra launcher plugin behind `hydra/launcher=slurm` (configs/hydra/launcher/slurm.yaml).

Hydra only instantiates launchers defined under the `hydra_plugins` namespace package, and imports every module
of it at startup (and executes it again at each plugin scan, so a class defined here is a new class after a
scan): this module stays thin, and the launcher's logic lives in `diffrop.slurm`, imported when a sweep is
launched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher


class SlurmLauncher(SubmititSlurmLauncher):
    """hydra-submitit-launcher's SlurmLauncher, failing fast when a job of the sweep can never start."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Any]:
        from diffrop.slurm.launch import launch_watching_pending

        return launch_watching_pending(super().launch, self.params, job_overrides, initial_job_idx)
