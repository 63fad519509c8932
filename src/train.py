"""Train a class-conditional diffusion model: `python src/train.py loss=pcl_exp tau=exp_decay`."""

from __future__ import annotations

import traceback
import warnings
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig

from diffrop import build


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    last = run_dir / "checkpoints" / "last.ckpt"
    if ckpt_path == "auto":
        return str(last) if last.is_file() else None
    if ckpt_path == "last":
        if not last.is_file():
            raise FileNotFoundError(
                f"ckpt_path=last but {last} does not exist; pass hydra.run.dir=<the run to resume> as well"
            )
        return str(last)
    if ckpt_path and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist")
    return ckpt_path


@rank_zero_only
def mark_failed(run_dir: Path, err: BaseException) -> None:
    """A FAILED file lets sweeps and table rendering show this run as failed instead of dropping it."""
    (run_dir / "FAILED").write_text(f"{type(err).__name__}: {err}\n\n{traceback.format_exc()}")


# The EMA copy is in eval mode on purpose.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", module="lightning")


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        L.seed_everything(cfg.seed, workers=True)
        datamodule = build.build_datamodule(cfg)
        module = build.build_module(cfg, datamodule)
        trainer = build.build_trainer(cfg, run_dir)
        if trainer.is_global_zero:
            datamodule.write_summary(run_dir)
        ckpt_path = resolve_ckpt_path(cfg.ckpt_path, run_dir)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)  # our own files
        trainer.save_checkpoint(
            run_dir / "checkpoints" / "last.ckpt"
        )  # the final step, whatever the interval
        (run_dir / "FAILED").unlink(missing_ok=True)
        rank_zero_info(
            f"Done: step {trainer.global_step}. Run directory: {run_dir}\n"
            f"  checkpoint   {run_dir / 'checkpoints/last.ckpt'}\n  metrics      {run_dir / 'metrics.csv'}\n"
            f"  samples      {run_dir / 'samples'}\n  data summary {run_dir / 'data_summary.json'}"
        )
    except BaseException as err:
        mark_failed(run_dir, err)
        raise
    finally:
        import wandb

        wandb.finish()


if __name__ == "__main__":
    main()
