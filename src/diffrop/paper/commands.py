"""The commands the reproduce driver runs: ``src/train.py``, ``src/eval.py``, ``src/classify.py``, each locally,
under torchrun (several devices) or as a one-job Hydra multirun on SLURM. Printed before they run, so what the
driver does is exactly what a user can type."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffrop.paper.cells import CLASSIFIER_ONLY, TABLE_EVAL, Cell, Options, model_dir
from diffrop.paper.smoke import (
    SMOKE_CLASSIFY,
    SMOKE_EVAL,
    SMOKE_TABLE_EVAL,
    SMOKE_TRAIN,
    write_smoke_extractor,
)


@dataclass
class Commands:
    """The stage commands of one table."""

    table: str
    opts: Options

    def train_commands(self, experiments: list[str]) -> list[list[str]]:
        o, root = self.opts, self.opts.root.resolve()
        common = [
            f"runs_root={root}",
            f"name={self.table}",
            *(SMOKE_TRAIN if o.smoke else []),
            *o.train_overrides,
        ]
        if o.devices > 1 and o.launcher == "local":  # one torchrun per model: DDP and multirun do not mix
            torchrun = [
                o.python,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={o.devices}",
            ]
            ddp = ["trainer=ddp", f"trainer.devices={o.devices}"]
            return [[*torchrun, "src/train.py", f"experiment={e}", *ddp, *common] for e in experiments]
        sweep = [
            "-m",
            f"experiment={','.join(experiments)}",
            f"hydra.sweep.dir={root / 'models'}",
            "hydra.sweep.subdir=${run_name}",
        ]
        if o.launcher == "slurm":
            sweep += ["hydra/launcher=slurm"]
            sweep += ["trainer=ddp", f"trainer.devices={o.devices}"] if o.devices > 1 else []
        return [[o.python, "src/train.py", *sweep, *common]]

    def eval_command(self, cell: Cell, out_dir: Path, num_samples: int) -> list[str]:
        o = self.opts
        ckpt = model_dir(o.root, cell.experiment) / "checkpoints" / "last.ckpt"
        args = [
            f"ckpt_path={ckpt.resolve()}",
            f"hydra.run.dir={out_dir.resolve()}",
            f"eval.num_samples={num_samples}",
        ]
        # no sampler flags: src/eval.py samples with the checkpoint's own recipe (build.eval_sampler)
        args += TABLE_EVAL.get(self.table, [])
        if o.smoke:
            args += [
                *SMOKE_EVAL,
                *SMOKE_TABLE_EVAL.get(self.table, []),
                "eval.extractor=fid-helper",
                f"eval.inception_weights={self.smoke_weights()}",
            ]
            args += [f"eval.reference_cache={(o.root / 'fid_refs').resolve()}"]
        else:
            args += [f"eval.extractor={o.extractor}"] if o.extractor else []
            args += [f"eval.inception_weights={o.inception_weights}"] if o.inception_weights else []
        args += o.eval_overrides
        if o.devices > 1 and o.launcher == "local":
            return [o.python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={o.devices}",
                    "src/eval.py", *args]  # fmt: skip
        if o.launcher == "slurm":  # a one-job multirun: the evaluation runs on a SLURM node
            args = ["-m", "hydra/launcher=slurm", f"hydra.sweep.dir={out_dir.parent.resolve()}",
                    f"hydra.sweep.subdir={out_dir.name}", *[a for a in args if not a.startswith("hydra.run.dir=")]]  # fmt: skip
        return [o.python, "src/eval.py", *args]

    def classify_command(self, cell: Cell, generated: Path | None) -> list[str]:
        o = self.opts
        dataset = CLASSIFIER_ONLY.get(cell.cell.split("__", 1)[1], cell.cell.split("__", 1)[0])
        if o.smoke:  # digits stand in for CIFAR100 (LT) and its balanced form
            dataset = "digits_lt" + (" data.imb_factor=1.0" if dataset == "cifar100" else "")
        args = [
            *f"data={dataset}".split(),
            f"hydra.run.dir={(o.root / cell.table / cell.cell / 'eval').resolve()}",
        ]
        args += [f"name={self.table}"]
        args += [f"generated={generated.resolve()}"] if generated else []
        args += SMOKE_CLASSIFY if o.smoke else []
        args += [a for a in o.classify_overrides]
        if o.launcher == "slurm":
            out = (o.root / cell.table / cell.cell).resolve()
            args = ["-m", "hydra/launcher=slurm", f"hydra.sweep.dir={out}", "hydra.sweep.subdir=eval",
                    *[a for a in args if not a.startswith("hydra.run.dir=")]]  # fmt: skip
        return [o.python, "src/classify.py", *args]

    def smoke_weights(self) -> Path:
        path = (self.opts.root / "smoke_inception.pt").resolve()
        if not path.is_file() and not self.opts.dry_run:  # a dry run only prints the commands
            write_smoke_extractor(path)
        return path
