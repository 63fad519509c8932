"""The one place that turns a Hydra config into objects (the rest of the package never imports Hydra)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from diffrop.data.datamodule import LongTailDataModule
from diffrop.data.diffaug import NUM_AUG_PARAMS
from diffrop.diffusion.sampling import SamplerSpec
from diffrop.diffusion.schedule import NoiseSchedule
from diffrop.losses.objective import Objective
from diffrop.runtime.run_status import run_id
from diffrop.training.checkpoint_io import load_checkpoint_file
from diffrop.training.classifier import ClassifierModule
from diffrop.training.module import DiffusionModule

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def compose(overrides: Sequence[str], run_dir: Path | str | None = None, name: str = "train") -> DictConfig:
    """configs/<name>.yaml composed as ``src/train.py`` would, without running it; with ``run_dir``, for
    ``hydra.run.dir=run_dir`` (the ``${hydra:...}`` interpolations resolve against it)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(name, overrides=list(overrides), return_hydra_config=run_dir is not None)
    if run_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
            HydraConfig.instance().set_config(cfg)
            del cfg["hydra"]
    return cfg


def is_multirun() -> bool:
    """This process is one job of a Hydra multirun (``-m``): a failure must not end the other jobs."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_dir_made_for_this_command() -> bool:
    """Hydra named the run dir itself (no ``hydra.run.dir=`` given, not a multirun job): a start that fails
    before writing anything may remove it rather than leave an empty timestamped folder."""
    overrides = HydraConfig.get().overrides.hydra
    return not is_multirun() and not any(o.startswith("hydra.run.dir=") for o in overrides)


def build_datamodule(cfg: DictConfig) -> LongTailDataModule:
    return instantiate(cfg.data, _convert_="all")


def build_net(cfg: DictConfig, num_classes: int, in_channels: int, image_size: int) -> torch.nn.Module:
    """``cfg.model.net`` for data of this shape: the data's facts come from the data, never from model configs."""
    num_aug_params = NUM_AUG_PARAMS if cfg.data.augment == "diffaug" else 0
    return instantiate(cfg.model.net, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                       num_aug_params=num_aug_params, _convert_="all")  # fmt: skip


def data_shape(datamodule: LongTailDataModule) -> dict[str, int]:
    """The ``build_net`` arguments a datamodule fixes."""
    return {"num_classes": datamodule.num_classes, "in_channels": datamodule.channels,
            "image_size": datamodule.image_size}  # fmt: skip


def build_objective(cfg: DictConfig) -> Objective:
    return Objective({name: instantiate(term) for name, term in cfg.loss.terms.items()})


def module_settings(cfg: DictConfig) -> dict[str, Any]:
    """The DiffusionModule's settings, all from the config (configs/optim, configs/model: no Python defaults)."""
    return {
        "lr": cfg.optim.lr,
        "warmup_steps": cfg.optim.warmup_steps,
        "ema_decay": cfg.optim.ema_decay,
        "fused_adam": cfg.optim.fused_adam,
        "nonfinite": cfg.optim.nonfinite,
        "channels_last": cfg.model.channels_last,
        "compile": cfg.model.compile,
        "label_drop": cfg.model.label_drop,
        "label_drop_prob": cfg.model.label_drop_prob,
    }


def build_module(cfg: DictConfig, datamodule: LongTailDataModule) -> DiffusionModule:
    return DiffusionModule(
        net=build_net(cfg, **data_shape(datamodule)),
        objective=build_objective(cfg),
        schedule=instantiate(cfg.diffusion),
        class_freq=datamodule.class_freq,
        run_config=OmegaConf.to_container(cfg, resolve=True),
        **module_settings(cfg),
    )


def build_classifier(cfg: DictConfig, num_classes: int, in_channels: int) -> ClassifierModule:
    """The Table 3 classifier of configs/classify.yaml: ``classifier`` network, ``optim`` recipe."""
    net = instantiate(cfg.classifier, num_classes=num_classes, in_channels=in_channels)
    return ClassifierModule(net, **OmegaConf.to_container(cfg.optim, resolve=True))


def run_hparams(cfg: DictConfig, choices: Mapping[str, str | None]) -> dict[str, Any]:
    """The resolved config plus, under ``choices``, the option picked in each config group (``loss: pcl_exp``).

    What experiment trackers filter and group runs by: values alone cannot tell ``loss=pcl_exp`` from a
    hand-edited ``ddpm`` with a PCL term. ``choices`` is Hydra's ``hydra:runtime.choices`` (its own
    ``hydra/...`` groups left out).
    """
    picked = {group: option for group, option in choices.items() if not group.startswith("hydra")}
    return OmegaConf.to_container(cfg, resolve=True) | {"choices": picked}


def build_sampler(cfg: DictConfig) -> SamplerSpec:
    """The run's ``sampler`` group: what its sample grids and periodic FID draw with, and (stored with the
    checkpoint) the recipe ``src/eval.py`` evaluates it with."""
    return SamplerSpec(**OmegaConf.to_container(cfg.sampler, resolve=True))


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The configured callbacks (``callbacks.<name>=null`` switches one off); one whose constructor takes
    ``sampler`` gets the run's (``build_sampler``), so ``sampler=...`` / ``sampler.steps=...`` govern them too."""
    sampler = build_sampler(cfg) if cfg.get("sampler") is not None else None
    callbacks = []
    for c in (cfg.get("callbacks") or {}).values():
        if c is None:
            continue
        make = instantiate(c, _partial_=True)
        takes_sampler = "sampler" in inspect.signature(make.func).parameters
        callbacks.append(make(sampler=sampler) if takes_sampler else make())
    return callbacks


def build_trainer(
    cfg: DictConfig, run_dir: str | Path, hparams: Mapping[str, Any] | None = None, **overrides: Any
) -> L.Trainer:
    """The Trainer with the configured loggers and callbacks; ``hparams`` (see ``run_hparams``) go to every logger."""
    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        if logger_cfg is None:  # `logger.wandb=null` switches one off
            continue
        extra = {"id": run_id(run_dir)} if name == "wandb" else {}
        loggers.append(instantiate(logger_cfg, **extra))
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=build_callbacks(cfg), **overrides)
    if hparams is not None:
        for logger in trainer.loggers:  # rank zero only (Lightning's loggers guard it)
            logger.log_hyperparams(dict(hparams))
    return trainer


# Checkpoints keep their resolved config; those written before the package was split into layers (v0.1) name
# these modules in their `_target_`s, call data.balance `data.sampler` and lack data.skip_corrupt.
# `upgrade_stored_config` maps all three, so an old config instantiates today. Moves are applied in turn (a target
# that moved twice passes both), so each move is listed once, old name -> the name it got.
MOVED_MODULES = {
    "diffrop.callbacks.": "diffrop.training.callbacks.",
    "diffrop.checkpoint_io.": "diffrop.training.checkpoint_io.",
    "diffrop.loggers.": "diffrop.training.loggers.",
    "diffrop.eval_callback.": "diffrop.training.periodic_fid.",
    "diffrop.module.": "diffrop.training.module.",
    "diffrop.progress.": "diffrop.runtime.progress.",
    "diffrop.classifier.CifarResNet": "diffrop.nets.resnet.CifarResNet",
    # issue 29: runtime/ holds process plumbing only; the Lightning bars went to training/
    "diffrop.runtime.progress.progress_bar": "diffrop.training.progress_bars.progress_bar",
}


def upgrade_stored_config(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's stored config (plain containers) in today's names: moved targets, renamed keys."""
    cfg = upgrade_targets(stored)
    data = cfg.get("data")
    if isinstance(data, dict) and "sampler" in data and "balance" not in data:
        data["balance"] = data.pop("sampler")
    image_data = (
        isinstance(data, dict) and data.get("_target_") == "diffrop.data.datamodule.LongTailDataModule"
    )
    if image_data:  # settings added since, at the value that reproduces what older runs did
        data.setdefault("skip_corrupt", False)
    return cfg


def upgrade_targets(node: Any) -> Any:
    """``node`` with every moved ``_target_`` renamed to its module today."""
    if isinstance(node, Mapping):
        out = {k: upgrade_targets(v) for k, v in node.items()}
        target = out.get("_target_")
        while isinstance(target, str) and (
            old := next((o for o in MOVED_MODULES if target.startswith(o)), None)
        ):
            target = out["_target_"] = MOVED_MODULES[old] + target[len(old) :]
        return out
    if isinstance(node, list | tuple):
        return [upgrade_targets(v) for v in node]
    return node


RECIPE_KEYS = ("name", "steps", "eta", "guidance")  # a model's evaluation recipe; the rest is how to run it


def eval_sampler(
    group: Mapping[str, Any], stored: Mapping[str, Any] | None, overrides: Sequence[str]
) -> dict:
    """The sampler settings an evaluation of a checkpoint uses.

    The checkpoint's own recipe (``RECIPE_KEYS`` of the ``sampler`` its training config stored: a paper DDPM run
    keeps DDPM-1000 at w = 0.8) over ``group``, the eval config's composed ``sampler`` node, with this command's
    ``sampler.<key>=`` overrides on top. ``sampler=<name>`` on the command line picks that group whole, as does a
    checkpoint that stored no sampler. ``overrides``: the command's Hydra overrides (``hydra:overrides.task``).
    """
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    if "sampler" in keys or not stored:
        return dict(group)
    explicit = {k.split(".", 1)[1] for k in keys if k.startswith("sampler.")}
    recipe = {k: stored[k] for k in RECIPE_KEYS if k in stored}
    return {**group, **recipe, **{k: group[k] for k in explicit}}


def stored_data_shape(ckpt: Mapping[str, Any], cfg: DictConfig) -> dict[str, int]:
    """The data shape a checkpoint's network was built for: ``net_data_shape`` in checkpoints written since model
    configs stopped naming it, else the label embedding's size and the stored model config."""
    if "net_data_shape" in ckpt:
        return dict(ckpt["net_data_shape"])
    num_classes = ckpt["state_dict"]["net.label_embedding.weight"].shape[0]
    return {"num_classes": num_classes, "in_channels": cfg.model.net.in_channels,
            "image_size": cfg.model.net.image_size}  # fmt: skip


def net_from_checkpoint(path: str | Path, ema: bool = True):
    """Rebuild the network (EMA weights by default) and schedule from a checkpoint's own stored config."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist (pass ckpt_path=<run dir>/checkpoints/last.ckpt)"
        )
    ckpt = load_checkpoint_file(path)
    if "diffrop_config" not in ckpt:
        raise ValueError(f"checkpoint {path} carries no DiffROP config: it was not written by src/train.py")
    cfg = OmegaConf.create(upgrade_stored_config(ckpt["diffrop_config"]))
    net = build_net(cfg, **stored_data_shape(ckpt, cfg))
    prefix = "ema." if ema else "net."
    net.load_state_dict({k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)})
    schedule: NoiseSchedule = instantiate(cfg.diffusion)
    return net.eval(), schedule, cfg, ckpt
