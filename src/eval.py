"""Evaluate a checkpoint: `python src/eval.py ckpt_path=<run>/checkpoints/last.ckpt [sampler.steps=100]`.

Rebuilds the EMA network from the checkpoint's own config, samples with its stored sampler recipe (command-line
``sampler.*`` values on top, ``build.eval_sampler``), draws the generated set in resumable shards (per-sample
seeds), scores it against cached reference features of the balanced training set and writes
<run>/eval/results.json (see diffrop.evaluation.pipeline). Under torchrun every rank draws its shards; rank 0 scores.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, fields
from datetime import datetime
from pathlib import Path
from typing import Any

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
from diffrop.diffusion.sampling_net import sampling_net
from diffrop.evaluation import pipeline as evaluation
from diffrop.evaluation import plots
from diffrop.evaluation import wandb_log as eval_wandb
from diffrop.evaluation.metrics import ReferenceCache, weights_fingerprint
from diffrop.runtime.atomic_write import atomic_write
from diffrop.runtime.entry import stop, stop_on_user_error
from diffrop.runtime.run_lock import RunDirLocked, run_dir_lock
from diffrop.runtime.run_status import clear_failed, write_failed

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


def run(cfg: DictConfig, run_dir: Path, overrides: Sequence[str] = ()) -> dict[str, Any] | None:
    """Evaluate ``cfg.ckpt_path``; writes and returns results.json's content (None on ranks > 0).

    ``overrides``: the command line's Hydra overrides, which say which ``sampler.*`` values the user set on top of
    the checkpoint's own sampler recipe (``build.eval_sampler``).
    """
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", 0)))
    e = cfg.eval
    settings = evaluation.EvalSettings(**{f.name: e[f.name] for f in fields(evaluation.EvalSettings)})
    net, schedule, ckpt_cfg, ckpt = build.net_from_checkpoint(cfg.ckpt_path)
    stored = OmegaConf.to_container(ckpt_cfg.sampler, resolve=True) if "sampler" in ckpt_cfg else None
    spec = SamplerSpec(
        **build.eval_sampler(OmegaConf.to_container(cfg.sampler, resolve=True), stored, overrides)
    )
    datamodule = datamodule_for(ckpt_cfg, cfg.get("data"))
    check_matches(datamodule, net, cfg.ckpt_path)
    specs = evaluation.sweep_specs(spec, e.guidance_sweep)
    ref_labels = evaluation.reference_images(datamodule, settings.reference_per_class)[1]
    evaluation.validate(settings, specs, datamodule, ref_labels, schedule.num_steps)  # before any slow work
    net, schedule = sampling_net(net.to(device), spec, device), schedule.to(device)  # compiled once, if asked
    extractor = (
        evaluation.build_extractor(settings.extractor, settings.inception_weights, device)
        if rank == 0
        else None
    )
    classifier = (
        evaluation.load_classifier(e.classifier_ckpt, device) if e.classifier_ckpt and rank == 0 else None
    )

    if rank == 0:
        cache = ReferenceCache(e.reference_cache)
        real_feats, real_labels, ref_key = evaluation.reference_features(
            datamodule,
            extractor,
            cache,
            settings.reference_per_class,
            settings.feature_batch_size,
            e.progress,
        )
    else:  # only the labels, for the size checks
        real_feats, real_labels = None, ref_labels
    manifest = {"checkpoint": str(Path(cfg.ckpt_path).resolve()), "global_step": ckpt.get("global_step")}
    runs = [
        evaluation.evaluate_spec(
            net, schedule, s, settings=settings, datamodule=datamodule, real=(real_feats, real_labels),
            extractor=extractor, out_dir=run_dir, device=device, manifest=manifest, classifier=classifier,
            rank=rank, world_size=world, progress=e.progress,
        )
        for s in specs
    ]  # fmt: skip
    if rank != 0:
        return None
    results = evaluation.combine(runs, sweep=bool(e.guidance_sweep))
    results |= {
        "checkpoint": {
            "path": manifest["checkpoint"],
            "global_step": manifest["global_step"],
            "name": ckpt_cfg.get("name"),
            "artifact": eval_wandb.checkpoint_artifact(OmegaConf.to_container(ckpt_cfg)),  # W&B lineage
        },
        "config": {
            "eval": _container(cfg),
            "train": OmegaConf.to_container(ckpt_cfg),
        },
        "extractor": {
            "kind": settings.extractor,
            "name": extractor.name,
            "weights": settings.inception_weights,
            "weights_fingerprint": weights_fingerprint(getattr(extractor, "weights_path", None)),
            "reference_key": ref_key,
            "reference_size": len(real_labels),
        },
        "settings": asdict(settings),
        "data": datamodule.summary(),
    }
    s = results["sampler"]
    plot = plots.plot_per_class(
        results["per_class"], results["data"]["class_counts"], run_dir / "per_class.png",
        class_names=results["data"]["class_names"],
        title=f"{ckpt_cfg.get('name')}: {s['name']} {s['steps']} steps, w={s['guidance_scale']:g}",
    )  # fmt: skip
    results["per_class_plot"] = str(plot) if plot else None  # None: no class had enough samples for a score
    with atomic_write(run_dir / "results.json", "w") as f:
        f.write(json.dumps(results, indent=2))
    return results


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
        mode=cfg.wandb.mode, name=f"eval-{run_dir.parent.name}", config=results["config"], tags=tags,
    )  # fmt: skip
    eval_wandb.log_results(run, results)
    run.finish()


def print_table(results: dict[str, Any], run_dir: Path) -> None:
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
    console.print(f"results: {run_dir / 'results.json'}")


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "ckpt_path"):  # a multirun job (its run dir does not need ckpt_path)
        sys.exit(NO_CKPT)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    rank = int(os.environ.get("RANK", 0))
    try:  # one evaluation per eval dir: two would mix their samples and results (diffrop.runtime.run_lock)
        with run_dir_lock(run_dir, rank=rank):  # rank 0 only: torchrun's ranks share the dir by design
            evaluate(cfg, run_dir, rank)
    except RunDirLocked as err:  # not marked FAILED: the eval dir belongs to the live holder
        stop(str(err), build.is_multirun())
        raise


def evaluate(cfg: DictConfig, run_dir: Path, rank: int) -> None:
    """``run``, the table and W&B; a failure writes <run_dir>/FAILED, a user error ends as one line (exit 1)."""
    try:
        results = run(cfg, run_dir, HydraConfig.get().overrides.task)
        if rank == 0 and results is not None:
            clear_failed(run_dir)
            print_table(results, run_dir)
            if cfg.wandb.enabled and cfg.wandb.mode != "disabled":
                try:
                    log_wandb(cfg, results, run_dir)
                except (
                    Exception
                ) as err:  # results.json is written; a W&B problem must not mark the run FAILED
                    print(f"W&B logging failed ({type(err).__name__}: {err}); results are in {run_dir}")
    except BaseException as err:
        if rank == 0:
            write_failed(run_dir, f"{type(err).__name__}: {err}")
        stop_on_user_error(
            err, build.is_multirun()
        )  # e.g. a full disk: one line, exit 1; what was written stays (atomic writes)
        raise


if __name__ == "__main__":
    main()
