"""Evaluate a checkpoint: `python src/eval.py ckpt_path=<run>/checkpoints/last.ckpt [sampler.steps=100]`.

Rebuilds the EMA network from the checkpoint's own config, samples with its stored sampler recipe (command-line
``sampler.*`` values on top, ``build.eval_sampler``), draws the generated set in resumable shards (per-sample
seeds), scores it against cached reference features of the balanced training set and writes its own record,
<run>/eval/<checkpoint step>-<settings hash>/results.json, never replacing another evaluation's
(diffrop.evaluation.records; <run>/eval/latest.json names the newest). Under torchrun every rank draws its shards;
rank 0 scores.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError
from rich.console import Console
from rich.table import Table

from diffrop import build
from diffrop.data.datamodule import LongTailDataModule
from diffrop.diffusion.sampling import SamplerSpec
from diffrop.evaluation import pipeline as evaluation
from diffrop.evaluation import plots, records
from diffrop.evaluation import wandb_log as eval_wandb
from diffrop.evaluation.settings import EvalSettings, moved_setting
from diffrop.runtime.entry import guarded_run
from diffrop.runtime.run_lock import LOCK_NAME
from diffrop.runtime.run_status import FAILED, missing_checkpoint, run_state

NO_CKPT = (
    "error: no checkpoint to evaluate: pass ckpt_path=<run>/checkpoints/last.ckpt "
    "(e.g. python src/eval.py ckpt_path=logs/train/runs/<timestamp>/checkpoints/last.ckpt)"
)


def eval_dir(ckpt_path: str | None) -> str:
    """<run>/eval for a checkpoint at <run>/checkpoints/x.ckpt (where the table renderer looks), else a new dir.

    Hydra resolves the run dir, and so calls this, before ``main``: without ``ckpt_path`` (None) this is where
    the user can be told what to pass, instead of an OmegaConf interpolation traceback.
    """
    if ckpt_path is None:
        sys.exit(NO_CKPT)  # SystemExit passes through OmegaConf and Hydra: one line on stderr, exit code 1
    path = Path(str(ckpt_path))
    if not path.is_file():  # one line, and no eval dir made for an evaluation that cannot start
        sys.exit(f"error: {missing_checkpoint(path)}")
    if path.is_file() and path.parent.name == "checkpoints":
        return str(path.parent.parent / "eval")
    return f"logs/eval/runs/{datetime.now():%Y-%m-%d_%H-%M-%S}"


OmegaConf.register_new_resolver("eval_dir", eval_dir, replace=True)


def datamodule_for(ckpt_cfg: DictConfig, data_overrides: DictConfig | None) -> LongTailDataModule:
    """The checkpoint's data module, with this command's non-null ``data.*`` values on top (e.g. ``data.root``).

    Selecting a data group (``data=cifar100lt``) or ``data.name`` only serves as a guard: it must name the
    checkpoint's dataset.
    """
    overrides = {
        k: v
        for k, v in (OmegaConf.to_container(data_overrides, resolve=False) or {}).items()
        if v is not None
    }
    trained_on = ckpt_cfg.data.name
    if overrides.get("name", trained_on) != trained_on:
        raise ValueError(
            f"the checkpoint was trained on data {trained_on!r} but this command asks for {overrides['name']!r}; "
            f"evaluate it on its own data (drop the data= override) or pick a checkpoint trained on {overrides['name']!r}"
        )
    cfg = OmegaConf.merge(ckpt_cfg, {"data": overrides})
    return build.build_datamodule(cfg)


def check_matches(datamodule: LongTailDataModule, net: torch.nn.Module, ckpt_path: str) -> None:
    """The data must have the checkpoint network's class count, image size and channels."""
    got = (datamodule.num_classes, datamodule.image_size, datamodule.channels)
    want = (net.num_classes, net.image_size, net.in_channels)
    if got != want:
        raise ValueError(
            f"data {datamodule.name!r} at {datamodule.root} has (classes, image size, channels) = {got} but the "
            f"checkpoint {ckpt_path} was trained for {want}; check data.root / data.* overrides"
        )


def resolve_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Evaluation(NamedTuple):
    results: dict[str, Any] | None  # results.json's content (None on ranks > 0)
    record: Path  # <eval dir>/<step>-<settings hash>
    reused: bool  # an earlier evaluation with the same settings at the same step: nothing was scored again


def run(cfg: DictConfig, run_dir: Path, overrides: Sequence[str] = ()) -> Evaluation:
    """Evaluate ``cfg.ckpt_path`` into its own record under ``run_dir``; an earlier record of the same step and
    settings is reused (one line) unless ``eval.overwrite``.

    ``overrides``: the command line's Hydra overrides, which say which ``sampler.*`` values the user set on top of
    the checkpoint's own sampler recipe (``build.eval_sampler``).
    """
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    settings = EvalSettings.from_node(OmegaConf.to_container(cfg.eval, resolve=True))
    if not Path(cfg.ckpt_path).is_file():
        raise FileNotFoundError(missing_checkpoint(cfg.ckpt_path))
    net, schedule, ckpt_cfg, ckpt = build.net_from_checkpoint(cfg.ckpt_path)
    stored = OmegaConf.to_container(ckpt_cfg.sampler, resolve=True) if "sampler" in ckpt_cfg else None
    spec = SamplerSpec(
        **build.eval_sampler(OmegaConf.to_container(cfg.sampler, resolve=True), stored, overrides)
    )
    datamodule = datamodule_for(ckpt_cfg, cfg.get("data"))
    check_matches(datamodule, net, cfg.ckpt_path)
    checkpoint, step = str(Path(cfg.ckpt_path).resolve()), ckpt.get("global_step")
    data_overrides = OmegaConf.to_container(cfg.data, resolve=False) if cfg.get("data") else {}
    keyed = {  # what shapes the numbers; not the batch size: per-sample seeds, the same images at any size
        "eval": records.keyed_eval(asdict(settings)),
        "sampler": asdict(spec) | {"batch_size": None},
        "data": data_overrides,
        "checkpoint": checkpoint,
    }
    record = records.record_dir(run_dir, step, keyed)
    if (record / records.RESULTS).is_file() and not settings.overwrite:
        if rank == 0:
            records.mark_latest(record)
            print(f"eval: {record} already holds this evaluation (checkpoint step {step}, the same settings); "
                  "shown again, not rescored (eval.overwrite=true scores it again)", flush=True)  # fmt: skip
        return Evaluation(json.loads((record / records.RESULTS).read_text()), record, True)
    state = run_state(cfg.ckpt_path, step, OmegaConf.select(ckpt_cfg, "trainer.max_steps"))
    if rank == 0 and state["state"] != "finished":
        print(f"eval: scoring the checkpoint of step {step} of trainer.max_steps={state['max_steps']}; the run is "
              + ("still training (" + state["holder"] + "): later steps are not in this evaluation"
                 if state["state"] == "training" else "unfinished (stopped)"), flush=True)  # fmt: skip
    evaluator = evaluation.Evaluator(  # checks every setting against the data before any slow work
        settings, net, schedule, spec, datamodule,
        device=resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", 0))), rank=rank, world_size=world,
    )  # fmt: skip
    results = evaluator.run(run_dir, {"checkpoint": checkpoint, "global_step": step})
    if results is None:  # ranks > 0 only draw their shards
        return Evaluation(None, record, False)
    results |= {
        "record": record.name,
        "checkpoint": {
            "path": checkpoint,
            "global_step": step,  # the step scored, which a run still training has already passed
            "name": ckpt_cfg.get("name"),
            "run": state,  # finished / training / stopped when evaluated
            "artifact": eval_wandb.checkpoint_artifact(OmegaConf.to_container(ckpt_cfg)),  # W&B lineage
        },
        "config": {"eval": _container(cfg), "train": OmegaConf.to_container(ckpt_cfg)},
    }
    write_results(results, record)
    return Evaluation(results, record, False)


def write_results(results: dict[str, Any], record: Path) -> None:
    """<record>/per_class.png (its path, or None, recorded as ``per_class_plot``), then results.json, atomically,
    and the eval dir's ``latest.json`` pointing at it."""
    s = results["sampler"]
    plot = plots.plot_per_class(
        results["per_class"], results["data"]["class_counts"], record / "per_class.png",
        class_names=results["data"]["class_names"],
        title=f"{results['checkpoint']['name']}: {s['name']} {s['steps']} steps, w={s['guidance_scale']:g}",
    )  # fmt: skip
    results["per_class_plot"] = str(plot) if plot else None  # None: no class had enough samples for a score
    records.write_results(record, results)


def _container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config; outside a Hydra run (tests, the compose API) ``${hydra:...}`` stays unresolved."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError:
        return OmegaConf.to_container(cfg, resolve=False)


def log_wandb(cfg: DictConfig, results: dict[str, Any], run_dir: Path) -> None:
    """Results to W&B (offline by default; see diffrop.evaluation.wandb_log): job_type eval, grouped with the training runs
    of the same name, tagged like them, the checkpoint's artifact as input when its training run logged one."""
    import wandb

    tracking = results["config"]["train"].get("tracking") or {}  # checkpoints from before issue 13 lack it
    tags = tracking.get("tags") or [f"data:{results['data']['dataset']}"]  # the training run's tags
    run = wandb.init(
        project=cfg.wandb.project, group=results["checkpoint"]["name"], job_type="eval", dir=str(run_dir),
        mode=cfg.wandb.mode, name=f"eval-{run_dir.parent.name}-{results.get('record', '')}".rstrip("-"),
        config=results["config"], tags=tags,
    )  # fmt: skip
    eval_wandb.log_results(run, results)
    run.finish()


def print_table(results: dict[str, Any], record: Path) -> None:
    s = results["sampler"]
    table = Table(
        title=f"{s['name']} {s['steps']} steps, w={s['guidance_scale']}, {results['num_samples']} samples"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in eval_wandb.flat_numbers(results["metrics"]).items():
        table.add_row(name, f"{value:.4f}")
    for name in (k for k, v in results["metrics"].items() if v is None):  # e.g. kid_std of a one-subset KID
        table.add_row(name, "n/a")
    if "best_w" in results:
        for entry in results["guidance_sweep"]:
            table.add_row(f"sweep w={entry['w']:g} fid", f"{entry['fid']:.4f}")
    console = Console()
    console.print(table)
    step = results["checkpoint"].get("global_step")
    console.print(f"results (checkpoint step {step}): {record / records.RESULTS}")


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "ckpt_path"):  # a multirun job (its run dir does not need ckpt_path)
        sys.exit(NO_CKPT)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    rank = int(os.environ.get("RANK", 0))
    # One evaluation per eval dir (two would mix their samples and results); torchrun's ranks share it by design.
    fresh = build.run_dir_made_for_this_command()  # a failed start's folder goes, as in src/train.py
    with guarded_run(
        run_dir, rank=rank, multirun=build.is_multirun(),
        disposable=(lambda: nothing_evaluated(run_dir)) if fresh else None,
    ):  # fmt: skip
        evaluate(cfg, run_dir, rank)


def nothing_evaluated(run_dir: Path) -> bool:
    """Only what Hydra and ``guarded_run`` write at a start (.hydra, the job log, the lock): no sample, no record."""
    return {p.name for p in run_dir.iterdir()} <= {".hydra", "eval.log", LOCK_NAME, FAILED}


def evaluate(cfg: DictConfig, run_dir: Path, rank: int) -> None:
    """``run``, the table and W&B, one W&B run per evaluation (what was written stays on failure: atomic writes)."""
    results, record, reused = run(cfg, run_dir, HydraConfig.get().overrides.task)
    if rank == 0 and results is not None:
        print_table(results, record)
        if cfg.wandb.enabled and cfg.wandb.mode != "disabled" and not reused:
            try:
                log_wandb(cfg, results, run_dir)
            except Exception as err:  # results.json is written; a W&B problem must not mark the run FAILED
                print(f"W&B logging failed ({type(err).__name__}: {err}); results are in {run_dir}")


if __name__ == "__main__":
    if moved := moved_setting(sys.argv[1:]):  # Hydra would refuse the old key with a traceback-like block
        sys.exit(f"error: {moved}")
    main()
