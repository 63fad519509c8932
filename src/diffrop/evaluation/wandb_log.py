"""What an evaluation shows on W&B: the results as a table (one row per shot group, one for all), the sample grid,
the per-class scores (table and plot), the guidance sweep plotted against w, and the lineage checkpoint -> results.

Kept apart from src/eval.py so that tests can log a hand-made results.json to an offline run and read it back.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffrop.runtime.run_status import run_id


def results_table(results: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the results table: ``group``, each per-shot score in results.json's order (whatever
    metrics declared ``per_shot`` keys), then ``accuracy``; a row per shot group (many / med / few), then ``all``;
    None where not scored (no classifier: no accuracy)."""
    metrics = results["metrics"]
    per_shot = metrics.get("per_shot") or {}
    keys = [k for k in dict.fromkeys(k for scores in per_shot.values() for k in scores) if k != "accuracy"]
    keys.append("accuracy")
    rows = [[group, *(scores.get(k) for k in keys)] for group, scores in per_shot.items()]
    return ["group", *keys], [*rows, ["all", *(metrics.get(k) for k in keys)]]


def checkpoint_artifact(train_config: Mapping[str, Any]) -> str | None:
    """The W&B model artifact the checkpoint's training run logged (``logger.wandb.log_model``), or None.

    Lightning's ``WandbLogger`` names it ``checkpoint_name`` or ``model-<run id>``; the run id comes from the run
    directory (``diffrop.runtime.run_status.run_id``), which the checkpoint's resolved config keeps as ``paths.output_dir``.
    """
    wandb_cfg = (train_config.get("logger") or {}).get("wandb") or {}
    if not wandb_cfg.get("log_model"):
        return None
    name = wandb_cfg.get("checkpoint_name") or f"model-{run_id(train_config['paths']['output_dir'])}"
    return f"{name}:latest"


def per_class_rows(results: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the per-class table: class, name, training images, then each per-class score."""
    scores = results["per_class"]
    data = results["data"]
    keys = [k for k in ("recall", "precision", "accuracy", "fid", "num_fake") if k in scores]
    rows = [
        [c, name, count, *(scores[k][c] for k in keys)]
        for c, (name, count) in enumerate(zip(data["class_names"], data["class_counts"], strict=True))
    ]
    return ["class", "name", "train_images", *keys], rows


def log_results(run: Any, results: Mapping[str, Any]) -> None:
    """Log ``results`` (results.json's content) to the W&B ``run``."""
    import wandb

    sampler = results["sampler"]
    caption = f"{sampler['name']} {sampler['steps']} steps, w={sampler['guidance_scale']:g}"
    columns, rows = results_table(results)
    media: dict[str, Any] = {"eval/results": wandb.Table(columns=columns, data=rows, allow_mixed_types=True)}
    # the Evaluator (diffrop.evaluation.pipeline) writes the grid beside the samples
    grid = Path(results["samples"]).parent / "grid.png"
    if grid.is_file():
        media["eval/samples"] = wandb.Image(str(grid), caption=f"{caption}: one row per class")
    if "per_class" in results:
        columns, rows = per_class_rows(results)
        media["eval/per_class"] = wandb.Table(columns=columns, data=rows, allow_mixed_types=True)
    if results.get("per_class_plot"):
        media["eval/per_class_plot"] = wandb.Image(
            results["per_class_plot"], caption="per class vs training count"
        )
    run.log(media)
    if sweep := results.get("guidance_sweep"):
        run.define_metric("sweep/w")
        run.define_metric("sweep/*", step_metric="sweep/w")  # plotted against w, not a step index
        for entry in sweep:
            run.log(
                {
                    "sweep/w": entry["w"],
                    **{f"sweep/{k}": v for k, v in flat_numbers(entry).items() if k != "w"},
                }
            )
        run.summary["eval/best_w"] = results["best_w"]
    run.summary.update({f"eval/{k}": v for k, v in flat_numbers(results["metrics"]).items()})
    link_checkpoint(run, results)


def link_checkpoint(run: Any, results: Mapping[str, Any]) -> str | None:
    """Mark the training run's checkpoint artifact as this run's input (W&B draws checkpoint -> eval run).

    wandb cannot resolve artifacts offline, so an offline run only records the name (config ``checkpoint.artifact``,
    set by src/eval.py); ``use_artifact`` runs when online.
    """
    name = results["checkpoint"].get("artifact")
    if name and not run.offline:
        run.use_artifact(name, type="model")
    return name


def flat_numbers(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The numbers of a nested dict under slash-joined keys (``per_shot/few/fid``); lists and None left out."""
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out |= flat_numbers(v, f"{prefix}{k}/")
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = v
    return out
