"""OmegaConf resolvers the configs use; ``register()`` runs before Hydra composes (src/train.py, tests).

``slurm_gpus``: the SLURM launcher's ``gpus_per_node`` follows ``trainer.devices`` on GPU trainers, but a CPU
trainer (``trainer=cpu`` / ``ddp_cpu``) must request no GPU at all: with ``--gpus-per-node=N`` sbatch refuses the
job on a CPU-only partition ("Invalid generic resource (gres) specification"). None makes submitit leave the
option out.

``first_set``: ``paths.output_dir`` is Hydra's ``runtime.output_dir``, which Hydra sets only when it runs a job:
``--cfg job --resolve`` printed ``None/checkpoints``. Falling back to ``hydra.run.dir`` prints the directory a run
would use.
"""

from __future__ import annotations

from omegaconf import OmegaConf


def slurm_gpus(accelerator: str, devices: int | str) -> int | None:
    """GPUs per node for sbatch: None (no request) under the CPU accelerator, else ``devices``."""
    return None if str(accelerator) == "cpu" else devices


def first_set(*values):
    """The first value that is not None (None if all are)."""
    return next((v for v in values if v is not None), None)


def register() -> None:
    OmegaConf.register_new_resolver("slurm_gpus", slurm_gpus, replace=True)
    OmegaConf.register_new_resolver("first_set", first_set, replace=True)
