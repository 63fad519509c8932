"""What a training run tells a dashboard and a log file: the W&B record of an offline run, read back from the
files wandb writes (config with the chosen options, tags, job type, group, a stable id across a resume), and the
progress lines a run writes when its output goes to a file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffrop.evaluation.wandb_log import checkpoint_artifact
from tests.helpers.train_utils import REPO, THREADS, TINY_RUN_OVERRIDES, TRAIN_PY, child_env
from tests.helpers.wandb_records import offline_runs, read_run

# the tiny run of conftest, but with W&B on
OVERRIDES = [o for o in TINY_RUN_OVERRIDES if o not in ("logger=csv", "~callbacks.progress_bar")]
OVERRIDES += [
    "logger=wandb",
    "loss=pcl_exp",
    "tau=exp_decay",
    "tau.tau0=0.7",
    "loss.terms.pcl.phi=hinge",
    "seed=3",
    "model.label_drop_prob=0",  # a whole batch dropped for guidance (p = 0.1 a step) logs no distances
    "callbacks.progress_bar.every_n_steps=1",  # kind=auto: stdout is a file, so plain progress lines
    "logger.wandb.offline=false",  # Lightning refuses log_model offline; WANDB_MODE=offline keeps it local
    "logger.wandb.log_model=true",
]


def train_to_file(run_dir: Path, steps: int, *extra: str, env_extra: dict[str, str] | None = None) -> str:
    """``src/train.py`` with stdout and stderr going to a file (as under SLURM or nohup); returns the file's text."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir.parent / f"{run_dir.name}_{steps}.log"
    env = child_env(WANDB_MODE="offline", OMP_NUM_THREADS=str(THREADS), **(env_extra or {}))
    env = {k: v for k, v in env.items() if not k.startswith(("SLURM_", "PYTHONWARNINGS"))}
    with open(log, "w") as out:
        proc = subprocess.run(
            [sys.executable, str(TRAIN_PY), *OVERRIDES, f"trainer.max_steps={steps}", f"hydra.run.dir={run_dir}", *extra],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=300,
        )  # fmt: skip
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    return text


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-step run, then the same command with max_steps=5 (a resume in the same run directory)."""
    base = tmp_path_factory.mktemp("tracked")
    (base / "bin").mkdir()
    (base / "bin" / "srun").write_text("#!/bin/sh\nexit 0\n")  # a login node of a cluster, outside any job
    (base / "bin" / "srun").chmod(0o755)
    run_dir, path = base / "run", {"PATH": f"{base / 'bin'}:{os.environ['PATH']}"}
    first = train_to_file(run_dir, 3, env_extra=path)
    second = train_to_file(run_dir, 5, env_extra=path)
    return {"dir": run_dir, "first_log": first, "second_log": second}


@pytest.mark.slow
def test_wandb_run_carries_the_resolved_config_and_chosen_options(run):
    record = read_run(offline_runs(run["dir"])[0])
    config = record.config
    assert config["loss"]["terms"]["pcl"]["phi"] == "hinge"  # the command line's value, resolved
    assert config["tau"]["tau0"] == 0.7
    assert config["seed"] == 3 and config["data"]["name"] == "digits_lt"
    assert config["choices"]["loss"] == "pcl_exp" and config["choices"]["tau"] == "exp_decay"
    assert config["choices"]["model"] == "tiny"
    assert not any(group.startswith("hydra") for group in config["choices"])


@pytest.mark.slow
def test_wandb_run_is_typed_tagged_named_and_grouped(run):
    record = read_run(offline_runs(run["dir"])[0])
    assert record.job_type == "train"
    assert set(record.tags) == {"data:digits_lt", "loss:pcl_exp", "tau:exp_decay"}
    assert record.name == "digits_lt-pcl_exp-exp_decay-s3"
    assert record.group == "digits_lt_pcl_exp"  # train.yaml's name: <data>_<loss choice>


@pytest.mark.slow
def test_resumed_run_continues_the_same_wandb_run(run):
    first, second = (read_run(path) for path in offline_runs(run["dir"]))
    assert first.run_id == second.run_id != ""
    assert second.name == first.name and second.config["tau"]["tau0"] == 0.7


@pytest.mark.slow
def test_pcl_diagnostics_reach_the_dashboard(run):
    history = read_run(offline_runs(run["dir"])[0]).history
    rows = [h for h in history if "train/pcl/grad_ratio" in h]
    assert len(rows) == 3  # log_every_n_steps=1: each of the 3 steps
    for h in rows:  # hinge may be inactive (ratio 0); the distances are positive for an untrained net
        assert h["train/pcl/grad_ratio"] >= 0 and h["train/pcl/d_between"] > 0 and h["train/pcl/d_within"] > 0


@pytest.mark.slow
def test_csv_logger_gets_the_config_too(run):
    import yaml

    hparams = yaml.safe_load((run["dir"] / "hparams.yaml").read_text())
    assert hparams["loss"]["terms"]["pcl"]["phi"] == "hinge" and hparams["choices"]["tau"] == "exp_decay"


def _progress(text: str) -> list[tuple[int, int]]:
    return [
        (int(a), int(b))
        for a, b in re.findall(r"step (\d+)/(\d+) \([\d.]+%\) \| train/loss [\d.e+-]+ \|", text)
    ]


@pytest.mark.slow
def test_output_to_a_file_gets_progress_lines(run):
    assert _progress(run["first_log"]) == [(1, 3), (2, 3), (3, 3)]
    assert _progress(run["second_log"]) == [(4, 5), (5, 5)]  # the resumed run counts on from its checkpoint
    assert re.search(r"img/s \| elapsed \d+:\d\d:\d\d \| ETA \d+:\d\d:\d\d", run["first_log"])
    assert _progress((run["dir"] / "train.log").read_text()) == [(1, 3), (2, 3), (3, 3), (4, 5), (5, 5)]


@pytest.mark.slow
def test_console_has_no_third_party_noise(run):
    log = run["first_log"]
    assert "Done: step 3" in log and "wandb" in log  # the run and W&B did print
    assert "litlogger" not in log  # Lightning's advertisement
    assert "srun" not in log  # Lightning's SLURM hint, with srun on PATH but no SLURM job
    assert "anonymous setting" not in log  # W&B's deprecation warning


@pytest.mark.slow
def test_log_model_records_the_checkpoint_artifact_that_eval_links_to(run):
    record = read_run(offline_runs(run["dir"])[0])
    (artifact,) = [a for a in record.artifacts if a.type == "model"]
    assert artifact.name == f"model-{record.run_id}"
    ckpt = torch.load(run["dir"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint_artifact(ckpt["diffrop_config"]) == f"{artifact.name}:latest"  # src/eval.py's input
    assert ckpt["diffrop_config"]["tracking"]["tags"] == record.tags  # what src/eval.py tags its run with
