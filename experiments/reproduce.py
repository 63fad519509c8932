"""Reproduce one table or figure of the paper: train what is missing, evaluate, render ours beside the paper's.

    python experiments/reproduce.py table2                      # local, one GPU, runs under logs/paper
    python experiments/reproduce.py table1 --devices 8          # DDP on 8 GPUs (torchrun per model)
    python experiments/reproduce.py table1 --launcher slurm \\
        --train hydra.launcher.partition=gpu --train hydra.launcher.account=mylab
    python experiments/reproduce.py table2 --smoke              # whole pipeline on CPU in minutes (SMOKE=1)

Tables: table1..table5, fig4a (tau ablation), fig4b (guidance sweep). Results: experiments/results/<table>.md
(.tex, PNGs); smoke results under experiments/results/smoke/. See experiments/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from diffrop.paper.cells import TABLES, Options
from diffrop.paper.reproduce import Driver


def parse(argv: list[str] | None = None) -> tuple[str, Options]:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("table", choices=TABLES)
    p.add_argument("--smoke", action="store_true", default=os.environ.get("SMOKE", "0") not in ("", "0"),
                   help="tiny network, few steps, digits for CIFAR, few samples, fake Inception (env SMOKE=1)")  # fmt: skip
    p.add_argument("--runs", type=Path, help="runs root (default logs/paper, or logs/smoke with --smoke)")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local")
    p.add_argument("--devices", type=int, default=1, help="GPUs per run (DDP); >1 locally uses torchrun")
    p.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                   help="extra src/train.py override, repeatable (e.g. data.root=/data trainer.max_steps=1000)")  # fmt: skip
    p.add_argument(
        "--eval", action="append", default=[], metavar="KEY=VALUE", help="extra src/eval.py override"
    )
    p.add_argument("--classify", action="append", default=[], metavar="KEY=VALUE",
                   help="extra src/classify.py override (table3)")  # fmt: skip
    p.add_argument("--inception-weights", help="local Inception weights file (eval.inception_weights)")
    p.add_argument("--extractor", choices=("torch-fidelity", "fid-helper"), help="eval.extractor")
    p.add_argument("--out", type=Path, default=Path("experiments/results"))
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--no-wandb", action="store_true",
                   help="do not log the rendered table to W&B (offline unless WANDB_MODE says otherwise; "
                   "WANDB_MODE=disabled skips it too)")  # fmt: skip
    a = p.parse_args(argv)
    root = a.runs or Path("logs/smoke" if a.smoke else "logs/paper")
    opts = Options(
        root=root, smoke=a.smoke, launcher=a.launcher, devices=a.devices, train_overrides=a.train,
        eval_overrides=a.eval, classify_overrides=a.classify, inception_weights=a.inception_weights,
        extractor=a.extractor, out=a.out, dry_run=a.dry_run, wandb=not a.no_wandb,
    )  # fmt: skip
    return a.table, opts


def main(argv: list[str] | None = None) -> int:
    table, opts = parse(argv)
    try:
        Driver(table, opts).run()
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
