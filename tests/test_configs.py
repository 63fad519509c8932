"""Every option of every config group composes (and resolves) with Hydra's compose API, the objects that
should build do, and a bad choice fails with Hydra's list of valid options."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from diffrop import build
from diffrop.data.datamodule import LongTailDataModule
from diffrop.diffusion.schedule import NoiseSchedule
from diffrop.losses.cbdm import CBDM
from diffrop.losses.ddpm import EpsMSE, PartnerEpsMSE
from diffrop.losses.pcl import PCL
from diffrop.losses.tau import Constant, Cosine, ExpDecay, Linear
from diffrop.nets.unet import ClassConditionalUNet
from tests.helpers.fakedata import write_image_folder
from tests.helpers.train_utils import CONFIG_DIR

SKIP_DIRS = {"local"}  # untracked machine config, may be empty
# Pieces that other options include (loss recipes = terms; paper experiments = recipe + method [+ preset]; the
# keys every sampler shares).
BUILDING_BLOCKS = {"loss/term", "experiment/method", "experiment/recipe", "experiment/preset", "sampler/base"}


def group_options() -> list[tuple[str, str]]:
    """(group, option) for every yaml file under configs/<group>/, nested ones as ``sub/name``
    (``experiment=cifar10lt/ddpm``); nested folders of ``hydra`` are Hydra's own groups (``hydra/launcher``)."""
    out = []
    for group in sorted(p for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name not in SKIP_DIRS):
        for f in sorted(group.rglob("*.yaml")):
            rel = f.relative_to(group).with_suffix("").as_posix()
            sub = rel.rsplit("/", 1)[0] if "/" in rel else ""
            if f"{group.name}/{sub}" in BUILDING_BLOCKS:
                continue
            if group.name == "hydra" and sub:
                out.append((f"hydra/{sub}", rel.rsplit("/", 1)[1]))
            else:
                out.append((group.name, rel))
    return out


def compose_train(overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose configs/train.yaml as `src/train.py` would, with the ${hydra:...} resolver pointing at output_dir."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        HydraConfig.instance().set_config(cfg)
        del cfg["hydra"]  # the job's config does not carry the hydra node, as at runtime
    return cfg


@functools.cache
def default_choices() -> frozenset[str]:
    """The groups train.yaml selects by default (``hydra.runtime.choices`` of a plain compose)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True)
    return frozenset(cfg.hydra.runtime.choices)


def resolved(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


OPTIONS = group_options()


def test_every_group_is_found():
    groups = {g for g, _ in OPTIONS}
    for g in (
        "data",
        "model",
        "diffusion",
        "optim",
        "loss",
        "tau",
        "sampler",
        "trainer",
        "logger",
        "callbacks",
    ):
        assert g in groups
    assert ("loss", "pcl_exp") in OPTIONS and ("tau", "exp_decay") in OPTIONS


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_resolves(group, option, tmp_path):
    in_defaults = group in default_choices()  # else an add-on group (e.g. classifier, for classify.py)
    cfg = compose_train([f"{'' if in_defaults else '+'}{group}={option}"], tmp_path)
    c = resolved(cfg)
    if group != "experiment":  # an experiment may select other options itself
        assert HydraConfig.get().runtime.choices[group] == option
    assert c["paths"]["output_dir"] == str(tmp_path)
    if group != "experiment":  # experiments name their runs themselves (test_experiments_set_name_and_seed)
        assert c["name"] == f"{c['data']['name']}_{HydraConfig.get().runtime.choices['loss']}"
    assert c["data"]["max_steps"] == c["trainer"]["max_steps"]
    assert not {"image_size", "in_channels", "num_classes"} & set(c["model"]["net"])  # facts of the data
    for term in c["loss"]["terms"].values():
        assert "_target_" in term


# --- what each group builds ---------------------------------------------------------------------------------

DATA = [o for g, o in OPTIONS if g == "data"]


@pytest.mark.parametrize("option", DATA)
def test_data_options_instantiate(option, tmp_path):
    overrides = [f"data={option}"]
    if option == "imagefolder_lt":
        write_image_folder(tmp_path / "tree", {"a": 10, "b": 3}, size=4)
        overrides.append(f"data.root={tmp_path / 'tree'}")
    dm = build.build_datamodule(compose_train(overrides, tmp_path))
    assert isinstance(dm, LongTailDataModule)
    if option == "digits_lt":
        assert dm.num_classes == 10 and dm.imb_factor == 0.1 and dm.image_size == 16 and not dm.hflip
        assert tuple(dm.train_set.images.shape[1:]) == (3, 16, 16)
    if option == "imagefolder_lt":
        assert dm.train_set.class_names == ["a", "b"] and dm.class_counts == [10, 1]  # 10 * 0.1 = 1
    if option in ("cifar10lt", "cifar100lt"):
        assert dm.imb_factor == 0.01 and dm.batch_size == 128 and dm.image_size == 32
        assert dm.on_device == "auto" and dm.source == option[:-2]  # CIFAR-100-LT batches live on the GPU too
    if option in ("cifar10", "cifar100"):
        assert dm.imb_factor == 1.0


def test_imagefolder_needs_a_root(tmp_path):
    cfg = compose_train(["data=imagefolder_lt"], tmp_path)
    with pytest.raises(InstantiationException, match=r"data\.root=/path/to/tree"):
        build.build_datamodule(cfg)


def test_default_model_config_is_the_cbdm_unet(tmp_path):
    net = build.build_net(
        compose_train(["model=ddpm_unet"], tmp_path), num_classes=10, in_channels=3, image_size=32
    )
    assert isinstance(net, ClassConditionalUNet)
    assert sum(p.numel() for p in net.parameters()) == 35_751_427


@torch.no_grad()
def test_tiny_model_config_runs_on_digits_size(tmp_path):
    cfg = compose_train(["model=tiny", "data=digits_lt"], tmp_path)
    net = build.build_net(cfg, **build.data_shape(build.build_datamodule(cfg))).eval()
    assert net.image_size == 16
    x = torch.randn(2, 3, 16, 16)
    out = net(x, torch.tensor([3, 900]), torch.tensor([1, 7]), torch.tensor([True, False]))
    assert out.shape == x.shape
    assert sum(p.numel() for p in net.parameters()) < 2_000_000


def test_diffusion_config_is_the_ddpm_schedule(tmp_path):
    schedule = instantiate(compose_train([], tmp_path).diffusion)
    assert isinstance(schedule, NoiseSchedule) and schedule.num_steps == 1000
    assert schedule.betas[0].item() == pytest.approx(1e-4) and schedule.betas[-1].item() == pytest.approx(
        0.02
    )


LOSS_TERMS = {
    "ddpm": {"ddpm": EpsMSE},
    "reweight": {"ddpm": EpsMSE},
    "cbdm": {"ddpm": EpsMSE, "cbdm": CBDM},
    **{f"pcl_{phi}": {"ddpm": EpsMSE, "pcl": PCL} for phi in ("neg_l2", "hinge", "recip", "exp")},
    **{
        f"cbdm_pcl_{phi}": {"ddpm": EpsMSE, "cbdm": CBDM, "pcl": PCL}
        for phi in ("neg_l2", "hinge", "recip", "exp")
    },
    "feed_pcl_exp": {"ddpm": EpsMSE, "pcl": PCL, "ddpm_partner": PartnerEpsMSE},
}


@pytest.mark.parametrize("option", [o for g, o in OPTIONS if g == "loss"])
def test_loss_options_build_their_terms(option, tmp_path):
    objective = build.build_objective(compose_train([f"loss={option}"], tmp_path))
    assert option in LOSS_TERMS, f"new loss option {option}: add its expected terms to LOSS_TERMS"
    expected = LOSS_TERMS[option]
    assert set(objective.terms) == set(expected)
    for name, cls in expected.items():
        assert isinstance(objective.terms[name], cls)
    assert objective.terms["ddpm"].reweight == (option == "reweight")
    if option == "feed_pcl_exp":  # the partner's DDPM loss is computed after the forward PCL runs
        assert list(objective.terms) == ["ddpm", "pcl", "ddpm_partner"]
    if "pcl" in expected:
        assert objective.terms["pcl"].phi == option.rsplit("pcl_", 1)[1]
        assert isinstance(objective.terms["pcl"].tau, ExpDecay)  # the default tau group


def term_yaml(name: str) -> dict:
    """configs/loss/term/<name>.yaml as written (``tau: ${tau}`` unresolved)."""
    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "loss" / "term" / f"{name}.yaml"))


PHIS = ("neg_l2", "hinge", "recip", "exp")
# each loss option: its terms in order, and where a term differs from its YAML under configs/loss/term/
LOSS_RECIPES = {
    "ddpm": {"ddpm": {}},
    "reweight": {"ddpm": {"reweight": True}},
    "cbdm": {"ddpm": {}, "cbdm": {}},
    **{f"pcl_{phi}": {"ddpm": {}, "pcl": {"phi": phi}} for phi in PHIS},
    **{f"cbdm_pcl_{phi}": {"ddpm": {}, "cbdm": {}, "pcl": {"phi": phi}} for phi in PHIS},
    "feed_pcl_exp": {"ddpm": {"weight": 0.5}, "pcl": {"phi": "exp"}, "ddpm_partner": {}},
}


@pytest.mark.parametrize("option", [o for g, o in OPTIONS if g == "loss"])
def test_loss_options_are_their_term_yamls_with_only_phi_or_reweight_set(option, tmp_path):
    """The loss files compose one another (pcl_hinge = pcl_exp with phi hinge, cbdm_pcl_* = cbdm + PCL): every
    option composes to exactly its terms' YAML, in order, with only the setting its name states changed."""
    assert option in LOSS_RECIPES, f"new loss option {option}: add its terms to LOSS_RECIPES"
    loss = OmegaConf.to_container(compose_train([f"loss={option}"], tmp_path).loss, resolve=False)
    expected = {name: {**term_yaml(name), **changed} for name, changed in LOSS_RECIPES[option].items()}
    assert loss == {"terms": expected}
    assert list(loss["terms"]) == list(expected)  # the terms' order (the objective sums them in it)
    weight = compose_train([f"loss={option}", "loss.terms.ddpm.weight=2"], tmp_path).loss.terms.ddpm.weight
    assert weight == 2  # a command-line override still reaches the composed recipe


TAU_AT = {  # tau(s) at s = t / T = 0.5 with the configs' constants
    "constant": (Constant, 1.0),
    "exp_decay": (ExpDecay, math.exp(-0.5 / 0.5)),
    "linear": (Linear, 0.5),
    "cosine": (Cosine, math.cos(math.pi / 4)),
}


@pytest.mark.parametrize("option", [o for g, o in OPTIONS if g == "tau"])
def test_tau_options_instantiate(option, tmp_path):
    tau = instantiate(
        compose_train([f"tau={option}", "tau.tau0=1"], tmp_path).tau
    )  # the shape, not the default
    cls, at_half = TAU_AT[option]
    assert isinstance(tau, cls)
    assert tau(torch.tensor([0.5])).item() == pytest.approx(at_half, rel=1e-6)
    assert tau(torch.tensor([0.0])).item() == pytest.approx(1.0)


def test_pcl_exp_with_exp_decay_reads_as_it_sounds(tmp_path):
    cfg = compose_train(["loss=pcl_exp", "tau=exp_decay", "tau.temperature=0.25"], tmp_path)
    pcl = build.build_objective(cfg).terms["pcl"]
    assert isinstance(pcl, PCL) and pcl.phi == "exp"
    assert isinstance(pcl.tau, ExpDecay) and pcl.tau.temperature == 0.25
    assert cfg.name == "cifar10lt_pcl_exp"


@pytest.mark.parametrize("option", [o for g, o in OPTIONS if g == "trainer"])
def test_trainer_options(option, tmp_path):
    cfg = compose_train([f"trainer={option}", "logger=csv"], tmp_path)
    t = cfg.trainer
    assert t.use_distributed_sampler is False and t.gradient_clip_val == 1.0
    if option in ("gpu", "ddp"):
        assert t.accelerator == "gpu" and t.precision == "bf16-mixed"
        return  # no GPU here: compose only
    trainer = build.build_trainer(cfg, tmp_path)
    assert trainer.max_steps == 300000
    assert str(trainer.accelerator.__class__.__name__) == "CPUAccelerator"


@pytest.mark.parametrize("option", [o for g, o in OPTIONS if g == "logger"])
def test_logger_options_instantiate(option, tmp_path):
    if option == "tensorboard":
        pytest.importorskip("tensorboard", reason="logger=tensorboard needs `pip install -e .[tensorboard]`")
    cfg = compose_train([f"logger={option}"], tmp_path)
    loggers = {name: instantiate(c) for name, c in cfg.logger.items()}
    assert "csv" in loggers  # metrics.csv is always written
    assert Path(loggers["csv"].log_dir) == tmp_path


def test_callbacks_instantiate(tmp_path):
    cfg = compose_train(["callbacks=default"], tmp_path)
    callbacks = {type(c).__name__: c for c in build.build_callbacks(cfg)}
    assert Path(callbacks["ModelCheckpoint"].dirpath) == tmp_path / "checkpoints"
    assert callbacks["SampleGrid"].out_dir == tmp_path / "samples"


def test_sample_grid_and_periodic_fid_draw_with_the_runs_sampler(tmp_path):
    """The training-time ``sampler`` group (what the checkpoint stores as its evaluation recipe) is what the grids
    and the periodic FID draw with: a paper DDPM run's DDPM-1000 at w = 0.8, and any command-line change to it."""
    cfg = compose_train(
        ["experiment=cifar10lt/ddpm", "callbacks=periodic_fid", "sampler.batch_size=32"], tmp_path
    )
    callbacks = {type(c).__name__: c for c in build.build_callbacks(cfg)}
    grid, fid = callbacks["SampleGrid"].sampler, callbacks["PeriodicFID"].spec
    assert grid == fid
    assert (grid.name, grid.steps, grid.eta, grid.guidance, grid.batch_size) == ("ddpm", 1000, None, 0.8, 32)
    # a cheaper proxy FID for a DDPM-1000 recipe: the FID's own overrides on top, the grid keeps the recipe
    cfg = compose_train(["experiment=cifar10lt/ddpm", "callbacks=periodic_fid",
                         "callbacks.periodic_fid.sampler_overrides={name: ddim, steps: 100, eta: 0.0}"], tmp_path)  # fmt: skip
    callbacks = {type(c).__name__: c for c in build.build_callbacks(cfg)}
    fid = callbacks["PeriodicFID"].spec
    assert (fid.name, fid.steps, fid.eta, fid.guidance) == ("ddim", 100, 0.0, 0.8)
    assert callbacks["SampleGrid"].sampler.name == "ddpm"
    cfg = compose_train(["callbacks=periodic_fid", "sampler=dpmpp2m", "sampler.steps=7"], tmp_path)
    grid = next(c for c in build.build_callbacks(cfg) if type(c).__name__ == "SampleGrid").sampler
    assert (grid.name, grid.steps, grid.guidance) == ("dpmpp2m", 7, 0.0)


def test_quickstart_experiment(tmp_path):
    cfg = compose_train(["experiment=quickstart"], tmp_path)
    choices = HydraConfig.get().runtime.choices
    assert (choices.data, choices.model, choices.trainer, choices.logger) == (
        "digits_lt",
        "tiny",
        "cpu",
        "csv",
    )
    assert cfg.data.max_steps == cfg.trainer.max_steps and cfg.data.batch_size == 64


def test_experiments_set_name_and_seed(tmp_path):
    """train.yaml's own keys come before the experiment, so the experiment's name wins; the command line wins last."""
    assert resolved(compose_train(["experiment=quickstart"], tmp_path))["name"] == "quickstart"
    assert resolved(compose_train(["experiment=cifar10lt/ddpm_pcl"], tmp_path))["name"] == "paper"
    c = resolved(compose_train(["experiment=quickstart", "name=mine", "seed=3"], tmp_path))
    assert (c["name"], c["seed"]) == ("mine", 3)


def test_paper_experiment_with_smoke_preset(tmp_path):
    cfg = compose_train(["experiment=cifar10lt/cbdm_pcl", "+experiment/preset@_global_=smoke"], tmp_path)
    c = resolved(cfg)
    assert c["data"]["name"] == "digits_lt" and c["trainer"]["max_steps"] == 20
    assert c["run_name"] == "cifar10lt__cbdm_pcl"
    assert set(build.build_objective(cfg).terms) == {"ddpm", "cbdm", "pcl"}


def test_full_module_builds_from_config(tmp_path):
    cfg = compose_train(["experiment=quickstart", "loss=cbdm_pcl_exp"], tmp_path)
    dm = build.build_datamodule(cfg)
    module = build.build_module(cfg, dm)
    torch.testing.assert_close(module.class_freq, dm.class_freq)
    assert module.run_config["loss"]["terms"]["pcl"]["phi"] == "exp"
    assert module.run_config["paths"]["output_dir"] == str(tmp_path)  # resolved, ready for the checkpoint


@pytest.mark.slow
def test_bad_choice_lists_the_valid_options(run_train):
    proc = run_train("loss=nope", timeout=120)
    assert proc.returncode != 0
    assert "nope" in proc.stderr
    assert "pcl_exp" in proc.stderr and "ddpm" in proc.stderr  # Hydra's "Available options in 'loss'"


def test_null_callback_or_logger_is_switched_off(tmp_path):
    """`callbacks.sample_grid=null` / `logger.wandb=null` on the command line remove that piece, not crash."""
    cfg = compose_train(["callbacks.sample_grid=null", "logger=wandb", "logger.wandb=null"], tmp_path)
    trainer = build.build_trainer(cfg, tmp_path)
    names = {type(c).__name__ for c in trainer.callbacks}
    assert "SampleGrid" not in names and "ModelCheckpoint" in names
    assert [type(lg).__name__ for lg in trainer.loggers] == ["ResumableCSVLogger"]


@pytest.mark.parametrize(
    "overrides", [["loss=pcl_exp"], ["experiment=cifar10lt/ddpm_pcl"], ["experiment=cifar100lt/cbdm_pcl"]]
)
def test_pcl_defaults_are_the_evidences_and_paper_recipes_use_them(overrides, tmp_path):
    # docs/design.md section 4 (experiments/results/overlap_bench.md, pcl_study.md): Eq. 12 by a partner forward,
    # per-anchor sum (Algorithm 1, K_i phi of one partner), tau0 = 0.2 (true grad ratio ~0.075 on digits_lt)
    cfg = compose_train(overrides, tmp_path)
    assert cfg.loss.terms.pcl.reduction == "algorithm1_sum" and cfg.loss.terms.pcl.pairing == "partner"
    assert cfg.tau.tau0 == 0.2 and cfg.loss.terms.pcl.tau.tau0 == 0.2


def test_eval_help_lists_only_the_groups_eval_reads():
    """``src/eval.py --help`` prints this template; Hydra's own lists every group, the training ones too."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=["ckpt_path=x.ckpt"], return_hydra_config=True)
    groups = dict(
        line.split(": ", 1)
        for line in cfg.hydra.help.template.split("== Config ==")[0].splitlines()
        if ": " in line
    )
    assert set(groups) == {"sampler", "data"}
    where, named = groups["sampler"].split(": ", 1)
    assert where == "any configs/sampler/<name>.yaml"  # no list to keep in step: a new sampler is one file
    assert {n.split(" ")[0] for n in named.split(", ")[:-1]} == {"ddim", "ddpm", "dpmpp2m"}
    assert all((CONFIG_DIR / "sampler" / f"{n}.yaml").is_file() for n in ("ddim", "ddpm", "dpmpp2m"))


def test_paths_before_a_job_runs_are_the_run_dir_it_would_use(tmp_path) -> None:
    """`--cfg job --resolve` prints the config before Hydra sets runtime.output_dir: paths must show the run
    directory (hydra.run.dir), not ``None/checkpoints``."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hydra.run.dir=logs/train/runs/x"], return_hydra_config=True)
    # as under --cfg: Hydra has not run the job yet
    assert OmegaConf.is_missing(cfg.hydra.runtime, "output_dir")
    HydraConfig.instance().set_config(cfg)
    assert cfg.callbacks.checkpoint.dirpath == "logs/train/runs/x/checkpoints"
    # once the job runs, Hydra's runtime.output_dir (in a multirun: the job's own dir) wins
    assert compose_train([], tmp_path).callbacks.checkpoint.dirpath == f"{tmp_path}/checkpoints"
