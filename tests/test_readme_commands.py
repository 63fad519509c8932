"""Every command in README.md's ```bash blocks runs here, on the CPU, so that the README cannot drift from the code.

Each command goes through the first rule of ``RULES`` that matches it; a command no rule matches fails the test
(a new README command needs a rule). What cannot run here is checked as far as it can be: a GPU, DDP, SLURM or
Optuna command composes its config (``--cfg job``), a make target must exist, an install line must pin what
pyproject.toml pins. A training command that can run on the CPU runs for 2 steps on digits with the tiny net
(the overrides in ``SMALL`` come after the README's, so ``data=cifar100lt`` becomes digits); an evaluation
runs on a few samples with a test-made Inception weights file where the line names one, else with the smoke
preset's small random feature network (those lines change the sampler or the guidance sweep, not the features).
"""

from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from diffrop.evaluation.records import results_path
from diffrop.paper.smoke import write_smoke_extractor
from diffrop.runtime.stored_run import resume_command
from tests.helpers.inception_weights import write_fidelity_weights
from tests.helpers.train_utils import REPO, train_env

SMALL = ["data=digits_lt", "model=tiny", "trainer=cpu", "logger=csv", "data.batch_size=8", "trainer.max_steps=2",
         "callbacks.sample_grid.every_n_steps=0", "sampler.steps=2", "callbacks.sample_grid.per_class=1",
         "callbacks.progress_bar.kind=log"]  # fmt: skip
SMALL_EVAL = ["eval.num_samples=40", "eval.shard_size=20", "eval.reference_per_class=5", "eval.metrics.prd.clusters_per_class=1",
              "eval.metrics.prd.runs=1", "eval.metrics.inception_score.splits=2", "eval.feature_batch_size=20", "sampler.steps=2",
              "sampler.batch_size=20", "sampler.compile=false", "device=cpu", "wandb.enabled=false"]  # fmt: skip


def readme_commands() -> list[list[str]]:
    """The commands of README.md's ```bash blocks, as argument lists (continuation lines joined, comments cut)."""
    blocks = re.findall(r"^```bash\n(.*?)^```", (REPO / "README.md").read_text(), re.S | re.M)
    text = "\n".join(blocks).replace("\\\n", " ")
    text = re.sub(
        r"<[^<>\n]*>", lambda m: m[0].replace(" ", "_"), text
    )  # <local pt_inception weights>: one word
    return [args for line in text.splitlines() if (args := shlex.split(line, comments=True))]


def makefile_targets() -> set[str]:
    heads = re.findall(r"^([A-Za-z0-9_%. -]+):(?!=)", (REPO / "Makefile").read_text(), re.M)
    return {target for head in heads for target in head.split()}


def pyproject_pin(package: str) -> str:
    return re.search(rf'"{package}==([^"]+)"', (REPO / "pyproject.toml").read_text())[1]


def run(args: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=train_env(), capture_output=True, text=True, timeout=timeout
    )


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"{shlex.join(proc.args)}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> dict[str, Path]:
    """A finished tiny quickstart run (the README's <run> / <dir>) and an Inception weights file."""
    root = tmp_path_factory.mktemp("readme")
    run_dir = root / "run"
    ok(run(["src/train.py", "experiment=quickstart", *SMALL[4:], f"hydra.run.dir={run_dir}"]))
    return {
        "root": root,
        "run": run_dir,
        "weights": write_fidelity_weights(root / "pt_inception.pth"),
        "stand_in": write_smoke_extractor(root / "stand_in.pt"),
    }


def check_make(args, place):
    assert args[1] in makefile_targets(), f"README runs `make {args[1]}`, which the Makefile does not define"


def check_venv(args, place):
    assert args[:3] == ["python3", "-m", "venv"]


def check_pip(args, place):
    """A CPU-wheel line: installing needs the network; its pins must be pyproject.toml's."""
    for spec in (a for a in args if "==" in a):
        name, version = spec.split("==")
        assert version == pyproject_pin(name), (
            f"README pins {spec}, pyproject.toml {name}=={pyproject_pin(name)}"
        )


def check_script(args, place):
    assert (REPO / args[1]).is_file()


def compose_only(args, place):
    """A GPU / DDP / SLURM / Optuna command: its config must compose (rc 0). Hydra prints no config of a sweep
    (``-m`` and ``--cfg`` exclude each other): a sweep composes its first point."""
    train_args = [a for a in args[args.index("src/train.py") :] if a != "-m"]
    first = [re.sub(r"=([^,\[]+),.*$", r"=\1", a) if "-m" in args else a for a in train_args]
    ok(run([*first, "--cfg", "job"]))


def as_is(args, place):
    ok(run(args[1:]))


def resume(args, place):
    out = ok(run([a.replace("logs/train/runs/<dir>", str(place["run"])) for a in args[1:]]))
    assert "is finished" in out


def train_small(args, place):
    name = f"train{zlib.crc32(shlex.join(args).encode())}"  # a directory per command
    where = ["hydra.sweep.dir=" if "-m" in args else "hydra.run.dir=", str(place["root"] / name)]
    ok(run([*args[1:], *SMALL, "".join(where)]))


def eval_small(args, place):
    """The line on the quickstart run, a few samples. The line naming ``eval.inception_weights`` runs with
    torch-fidelity's Inception (test-made weights) into the default eval dir, ``<run>/eval``, with its W&B run
    offline: the train-then-evaluate path a user takes first. The other lines change the sampler or the sweep:
    a small stand-in feature network is enough there."""
    ckpt = str(place["run"] / "checkpoints" / "last.ckpt")
    swapped = [
        a.replace("<run>/checkpoints/last.ckpt", ckpt)
        .replace("ckpt_path=...", f"ckpt_path={ckpt}")
        .replace("<local_pt_inception_weights>", str(place["weights"]))
        for a in args[1:]
    ]
    inception = any(a.startswith("eval.inception_weights=") for a in args)
    if inception:
        out = place["run"] / "eval"
        extra = [f"eval.reference_cache={place['root'] / 'refs'}", "wandb.enabled=true"]
    else:
        out = place["root"] / f"eval{zlib.crc32(shlex.join(args).encode())}"
        extra = ["eval.extractor=fid-helper", f"eval.inception_weights={place['stand_in']}",
                 f"eval.reference_cache={place['root'] / 'refs_stand_in'}", f"hydra.run.dir={out}"]  # fmt: skip
    ok(run([*swapped, *SMALL_EVAL, *extra]))
    results = json.loads(results_path(out).read_text())
    assert results["num_samples"] == 40 and results["checkpoint"]["run"]["state"] == "finished"
    m = results["metrics"]
    assert set(m["per_shot"]) == {"many", "med", "few"}
    assert all(math.isfinite(v) and v >= 0 for v in (m["fid"], *(g["fid"] for g in m["per_shot"].values())))
    if inception:
        assert results["extractor"]["name"] == "inception-v3-compat" and m["is_mean"] >= 1 - 1e-6
        assert list((out / "wandb").glob("offline-run-*")) and not (out / "FAILED").exists()


RULES = [  # (pattern on the command line, how it runs here)
    (r"^make ", check_make),
    (r"^python3 -m venv ", check_venv),
    (r"^\.venv/bin/pip install ", check_pip),
    (r"^bash ", check_script),
    (r"^torchrun .*src/train\.py", compose_only),
    (r"^python src/train\.py .*(trainer=gpu|hydra/launcher=slurm|hparams_search=)", compose_only),
    (r"^python src/train\.py .*--cfg", as_is),
    (r"^python src/train\.py hydra\.run\.dir=\S+$", resume),
    (r"^python src/train\.py ", train_small),
    (r"^python src/eval\.py ", eval_small),
]


def rule_for(args: list[str]):
    line = " ".join(args)
    return next((fn for pattern, fn in RULES if re.search(pattern, line)), None)


def test_the_resume_command_a_stop_prints_is_a_readme_command():
    """What a stopped or crashed run prints (``error: stopped by ...; resume it ... with: <command>``) is the README's
    resume line, which ``resume`` below runs."""
    printed = resume_command(Path("logs/train/runs/<dir>"))
    assert shlex.split(printed) in readme_commands()


def test_every_readme_command_has_a_rule():
    commands = readme_commands()
    assert len(commands) >= 15  # the blocks were found
    assert [shlex.join(c) for c in commands if rule_for(c) is None] == []


@pytest.mark.slow
@pytest.mark.parametrize("args", readme_commands(), ids=lambda a: shlex.join(a)[:60])
def test_readme_command_runs(args, place):
    rule_for(args)(args, place)
