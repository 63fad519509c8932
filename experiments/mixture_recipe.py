"""The Gaussian-mixture recipe of experiments/overlap_bench.py and experiments/ddp_streams.py: the training recipe
(``data=gaussian_lt``, ``model=mlp``), an arm fitted in-process as ``src/train.py`` fits it, the data's closed-form
facts, the closed-form eps*'s own scores (each score's sampler floor), and the scoring flags; the scores themselves
are diffrop.paper.mixture_scores'."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch

from diffrop import build
from diffrop.paper.mixture_scores import flat_scores, known_facts, score_net

# Training recipe of every arm (only the loss differs). A 0.1M MLP converges far faster than the CIFAR UNet.
RECIPE = ("data=gaussian_lt", "data.batch_size=128", "model=mlp", "trainer=cpu", "logger=csv", "optim.lr=2e-3",
          "optim.warmup_steps=100", "optim.ema_decay=0.995", "trainer.log_every_n_steps=50",
          "callbacks.sample_grid=null", "callbacks.checkpoint=null", "callbacks.on_interrupt=null",
          "callbacks.progress_bar=null", "callbacks.model_summary=null")  # fmt: skip
# DPM-Solver++(2M) by default: with the closed-form eps* at 30 steps its KL is the finite-sample bias of the fitted
# covariance (~0.04), while DDIM-50 adds ~0.8 and shrinks the head-tail overlap (BC -0.10): the off-plane variance
# (0.01) is far below the noise levels of DDIM's evenly spaced grid.
SAMPLERS = ("dpmpp2m", "ddim")  # DDIM at eta = 0
FLAGS = (
    "guidance",
    "per_class",
    "eval_per_class",
    "mc_draws",
    "sampler",
    "sample_steps",
)  # stored in the meta


def train(arm, seed: int, args, run_dir: Path):
    """Fit one arm for one seed exactly as src/train.py does (minus checkpoints); returns (module, datamodule)."""
    import lightning as L

    mine = {o.split("=")[0] for o in arm.overrides}
    recipe = [o for o in RECIPE if o.split("=")[0] not in mine]  # the arm's own value (data.batch_size) wins
    overrides = [*recipe, *arm.overrides, *args.train, f"trainer.max_steps={args.steps * arm.steps_factor}",
                 f"seed={seed}", f"data.seed={seed}"]  # fmt: skip
    cfg = build.compose(overrides, run_dir)
    L.seed_everything(seed, workers=True, verbose=False)
    datamodule = build.build_datamodule(cfg)
    module = build.build_module(cfg, datamodule)
    trainer = build.build_trainer(
        cfg,
        run_dir,
        default_root_dir=run_dir,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(module, datamodule=datamodule)
    return module, datamodule


def quiet_worker() -> None:
    """One thread per run, and one progress line per run: Lightning's per-Trainer notices and warnings off."""
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def bayes_reference(seed: int, args, truth: list[float]) -> dict:
    """Every score of the closed-form eps* itself, through the same sampler and noise: the floor of each score."""
    from hydra.utils import instantiate

    from diffrop.data.gaussian_mixture import BayesDenoiser

    quiet_worker()
    cfg = build.compose([*RECIPE, *args.train], args.runs / "bayes")
    mixture, schedule = build.build_datamodule(cfg).mixture, instantiate(cfg.diffusion)
    return score_net(BayesDenoiser(mixture, schedule.alpha_bars), schedule, mixture, seed, args, truth)


def prepare(args, arms: list) -> tuple[dict, dict]:
    """The data's closed-form facts for the header (counts, the head-tail Bayes error and overlap, the net's size);
    the Bayes classifier's true head shares for every run."""

    if args.guidance[0] != 0:
        raise SystemExit("--guidance: the first w must be 0 (the table's key columns are at w = 0)")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.jobs))
    cfg = build.compose([*RECIPE, *args.train], args.runs / "bayes")
    dm = build.build_datamodule(cfg)
    net = build.build_net(cfg, **build.data_shape(dm))
    facts = {"num_classes": dm.mixture.num_classes, "dim": dm.mixture.dim, "counts": dm.class_counts,
             "batch_size": dm.batch_size, **known_facts(dm.mixture, args.mc_draws),
             "params": sum(p.numel() for p in net.parameters()), **{k: getattr(args, k) for k in FLAGS}}  # fmt: skip
    return facts, {"truth": facts["true_head_share"]}


def bayes_json(results: dict, args, context: dict) -> dict:
    """Every score of the closed-form eps* per seed of the runs: the JSON's ``bayes_reference``."""
    seeds = sorted({s for runs in results.values() for s in runs})
    refs = {s: bayes_reference(s, args, context["truth"]) for s in seeds}
    return {"bayes_reference": {str(s): flat_scores(r, args.guidance) | {"slope_per_t": r["eps"]["per_t"]["slope_bayes"]}
                                for s, r in refs.items()}}  # fmt: skip


def progress(result: dict, args) -> str:
    s = flat_scores(result, args.guidance)
    ratio = f"grad ratio {s['grad_ratio']:.3g}, " if "grad_ratio" in s else ""
    return (f"{ratio}eps_err {s['eps_err']:.4f}, leakage {s['leakage_tail@w0']:+.4f}, KL tail {s['kl_tail@w0']:.3f} "
            f"({result['wall_s']:.0f} s)")  # fmt: skip


def options(p) -> None:
    p.add_argument("--per-class", type=int, default=2000, help="samples per class")
    p.add_argument(
        "--eval-per-class", type=int, default=1000, help="held-out draws per class and t (eps error)"
    )
    p.add_argument(
        "--mc-draws", type=int, default=500_000, help="per class, for the true Bayes errors and shares"
    )
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default="dpmpp2m")
    p.add_argument("--sample-steps", type=int, default=30)
    p.add_argument("--guidance", type=float, nargs="+", default=[0.0], help="w values; the first must be 0")
    p.add_argument(
        "--train", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides for every arm"
    )
