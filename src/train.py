"""Train a class-conditional diffusion model: `python src/train.py loss=pcl_exp tau=exp_decay`."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig

from diffrop import build
from diffrop.runtime.atomic_write import remove_stale_temps
from diffrop.runtime.entry import guarded_run, slurm_job, stop
from diffrop.runtime.stored_run import (
    StoredRunMismatch,
    adopt_stored_run,
    resume_command,
    saved_step,
    unfinished_twin,
)
from diffrop.training.checkpoint_io import check_compatible
from diffrop.training.console import quiet_third_party_noise


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    last = run_dir / "checkpoints" / "last.ckpt"
    if ckpt_path == "auto":  # the newest of last.ckpt and SLURM pre-emption checkpoints (hpc_ckpt_N.ckpt)
        found = [p for p in (last, *run_dir.glob("hpc_ckpt_*.ckpt")) if p.is_file()]
        return str(max(found, key=lambda p: p.stat().st_mtime)) if found else None
    if ckpt_path == "last":
        if not last.is_file():
            raise FileNotFoundError(
                f"ckpt_path=last but {last} does not exist; pass hydra.run.dir=<the run to resume> as well"
            )
        return str(last)
    if ckpt_path and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist")
    return ckpt_path


# The EMA copy is in eval mode on purpose.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", module="lightning")
quiet_third_party_noise()


def optimized_value(trainer: L.Trainer, name: str | None) -> float | None:
    """The final value of ``optimized_metric`` (what a sweeper such as Optuna minimises), None when unset."""
    if not name:
        return None
    if name not in trainer.callback_metrics:
        raise ValueError(
            f"optimized_metric={name} was never logged by this run; for val/fid add callbacks=periodic_fid with "
            f"callbacks.periodic_fid.every_n_steps dividing trainer.max_steps (logged: {sorted(trainer.callback_metrics)})"
        )
    return float(trainer.callback_metrics[name])


# Short runs: diffrop.training.callbacks.LogFirstAndLastStep logs the first and last step whatever the interval.
warnings.filterwarnings(
    "ignore", message=r"The number of training batches .* logging interval", module="lightning"
)


def resume_hint(run_dir: Path) -> str | None:
    """How a stopped or crashed run goes on: the command with its directory, once it has a checkpoint."""
    step = saved_step(run_dir)
    return None if step is None else f"resume it from step {step} with: {resume_command(run_dir)}"


def nothing_measured(run_dir: Path) -> bool:
    """No checkpoint and no logged step: a failed start, whose timestamped folder need not stay."""
    saved = [*run_dir.glob("checkpoints/*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")]
    return not saved and not (run_dir / "metrics.csv").exists()


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = build.is_multirun()
    # a failed start's timestamped folder goes, not kept as litter
    fresh = build.run_dir_made_for_this_command()
    with guarded_run(
        run_dir, rank=rank_zero_only.rank, multirun=multirun, resume=lambda: resume_hint(run_dir),
        disposable=(lambda: nothing_measured(run_dir)) if fresh else None,
    ) as lock:  # fmt: skip
        if lock is not None:  # rank 0, alone in the run dir: half-written saves of a killed run can go
            remove_stale_temps(run_dir / "checkpoints")
        return train(cfg, run_dir)


def train(cfg: DictConfig, run_dir: Path) -> float | None:
    """Fit, save the final checkpoint; returns ``optimized_metric``'s final value for a sweeper (else None)."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build.build_datamodule(cfg)
    module = build.build_module(cfg, datamodule)
    # default_root_dir: Lightning's SLURM pre-emption checkpoints (hpc_ckpt_N.ckpt) go to the run dir too
    hparams = build.run_hparams(cfg, HydraConfig.get().runtime.choices)
    trainer = build.build_trainer(cfg, run_dir, hparams=hparams, default_root_dir=run_dir)
    if trainer.is_global_zero:
        datamodule.write_summary(run_dir)
        if job := slurm_job():
            (run_dir / "job.json").write_text(json.dumps(job, indent=1))
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, run_dir)
    if ckpt_path:
        check_compatible(ckpt_path, module)  # one clear line instead of a size-mismatch listing
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)  # our own files
    trainer.save_checkpoint(  # the final step, whatever the interval; the whole state, to resume from
        run_dir / "checkpoints" / "last.ckpt", weights_only=False
    )
    value = optimized_value(trainer, cfg.get("optimized_metric"))
    rank_zero_info(
        f"Done: step {trainer.global_step}. Run directory: {run_dir}\n"
        f"  checkpoint   {run_dir / 'checkpoints/last.ckpt'}\n  metrics      {run_dir / 'metrics.csv'}\n"
        f"  samples      {run_dir / 'samples'}\n  data summary {run_dir / 'data_summary.json'}"
        + (f"\n  {cfg.optimized_metric} = {value:.4f} (returned to the sweeper)" if value is not None else "")
    )
    return value


if __name__ == "__main__":
    try:  # before Hydra writes <run dir>/.hydra: a stored run keeps its overrides (diffrop.runtime.stored_run)
        sys.argv[1:], finished = adopt_stored_run(sys.argv[1:])
    except StoredRunMismatch as err:
        stop(str(err))
    if finished:
        print(finished)
        sys.exit(0)
    if note := unfinished_twin(sys.argv[1:]):
        print(note, flush=True)
    main()
