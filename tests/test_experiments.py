"""Paper experiment configs and the reproduction driver (experiments/reproduce.py, diffrop.paper.reproduce).

Configs: every paper run composes, alone and with the smoke preset, and carries the recipe of docs/design.md
section 2. Driver: its skip / retry / FAILED logic, run against a fake `python` that stands in for
src/train.py and src/eval.py and records what it was asked to do. The real SMOKE pipeline is a slow test.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from diffrop.evaluation.records import results_path
from diffrop.paper.cells import Options, load_cells, model_dir, override_value, training_state
from diffrop.paper.reproduce import Driver
from tests.helpers.train_utils import REPO, child_env

CONFIG_DIR = REPO / "configs"
PAPER_RUNS = sorted(
    p.relative_to(CONFIG_DIR / "experiment").with_suffix("").as_posix()
    for d in ("cifar10lt", "cifar100lt")
    for p in (CONFIG_DIR / "experiment" / d).glob("*.yaml")
)


def compose_train(*overrides: str):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("experiment", PAPER_RUNS)
@pytest.mark.parametrize("smoke", [False, True], ids=["paper", "smoke"])
def test_paper_run_composes_with_its_recipe(experiment, smoke):
    dataset, method = experiment.split("/")
    cfg = compose_train(f"experiment={experiment}", *(["+experiment/preset@_global_=smoke"] if smoke else []))
    assert cfg.run_name == f"{dataset}__{method}"  # the directory name reproduce.py and the renderer use
    assert cfg.hydra.run.dir == f"{cfg.runs_root}/models/{dataset}__{method}"
    assert cfg.hydra.sweep.subdir == cfg.run_name
    w = 1.6 if method.startswith("cbdm") else 0.8  # CBDM's README
    assert cfg.sampler.guidance == w
    if smoke:
        assert (
            cfg.data.name == "digits_lt" and cfg.trainer.max_steps <= 50 and cfg.runs_root.endswith("smoke")
        )
        assert cfg.model.net.base_channels <= 32
        return
    batch = {"cifar10lt": 128, "cifar100lt": 48 if method.startswith("cbdm") else 64}[dataset]
    assert cfg.data.name == dataset and cfg.data.batch_size == batch and cfg.data.imb_factor == 0.01
    assert cfg.trainer.max_steps == 300_000 and cfg.trainer.gradient_clip_val == 1.0
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.ema_decay) == (2e-4, 5000, 0.9999)
    assert cfg.model.net.base_channels == 128 and cfg.sampler.name == "ddpm" and cfg.sampler.steps == 1000
    terms = set(cfg.loss.terms)
    assert ("cbdm" in terms) == method.startswith("cbdm") and ("pcl" in terms) == ("pcl" in method)
    if "pcl" in terms:
        phi = {"ddpm_pcl_neg_l2": "neg_l2", "ddpm_pcl_recip": "recip"}.get(method, "exp")
        tau = {"ddpm_pcl_tau_constant": "Constant", "ddpm_pcl_tau_linear": "Linear"}.get(method, "ExpDecay")
        assert cfg.loss.terms.pcl.phi == phi and cfg.tau._target_.endswith(tau)
        # the pinned PCL constants (configs/experiment/recipe/pcl.yaml; docs/design.md section 4), whatever the
        # global defaults of configs/loss/term/pcl.yaml and configs/tau/ say
        pcl = cfg.loss.terms.pcl
        assert (pcl.pairing, pcl.distance, pcl.reduction, pcl.pairs, pcl.weight) == (
            "partner",
            "mean",
            "algorithm1_sum",
            "local",
            1.0,
        )
        assert cfg.tau.tau0 == 0.2 and cfg.tau.get("temperature", 0.5) == 0.5
    assert cfg.loss.terms.ddpm.reweight == (method == "ddpm_reweight")
    assert cfg.data.balance == {"ddpm_rs": "rs", "ddpm_sqrt_rs": "sqrt_rs"}.get(method, "none")
    assert cfg.data.augment == ("diffaug" if method == "ddpm_diffaug" else "none")


@pytest.mark.parametrize("table", ["table1", "table2", "table3", "table4", "table5", "fig4a", "fig4b"])
def test_every_cell_has_an_experiment_config(table):
    for cell in load_cells(table):
        if cell.experiment is not None:
            assert (CONFIG_DIR / "experiment" / f"{cell.experiment}.yaml").is_file(), cell
            assert cell.num_samples in (10_000, 50_000)


def test_cells_map_table5_forms_and_table3_classifier_only_rows():
    t5 = {c.cell: c.experiment for c in load_cells("table5")}
    assert (
        t5["cifar10lt__exp"] == "cifar10lt/ddpm_pcl"
        and t5["cifar100lt__neg_l2"] == "cifar100lt/ddpm_pcl_neg_l2"
    )
    t3 = {c.cell: c for c in load_cells("table3", smoke=True)}
    assert t3["cifar100lt__lt_only"].experiment is None and t3["cifar100__balanced"].num_samples is None
    assert t3["cifar100lt__cbdm"].experiment == "cifar100lt/cbdm" and t3["cifar100lt__cbdm"].num_samples == 60


def test_override_value_takes_the_last():
    assert override_value(["a=1", "trainer.max_steps=5", "+trainer.max_steps=7"], "trainer.max_steps") == "7"
    assert override_value(["a=1"], "trainer.max_steps") is None


# --- the driver against a fake python ---------------------------------------------------------------------
FAKE = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    args = sys.argv[1:]
    with open(os.environ["FAKE_CALLS"], "a") as f:
        f.write(json.dumps(args) + "\\n")
    kv = dict(a.split("=", 1) for a in args if "=" in a)
    fail = os.environ.get("FAKE_FAIL", "")
    if args[0] == "src/train.py":
        import torch  # only here: an import costs seconds on a busy machine
        root = Path(kv["runs_root"])
        for exp in kv["experiment"].split(","):
            run = root / "models" / exp.replace("/", "__")
            run.mkdir(parents=True, exist_ok=True)
            if exp in fail.split(","):
                (run / "FAILED").write_text("RuntimeError: boom")
                continue
            (run / "FAILED").unlink(missing_ok=True)  # as src/train.py does on success
            (run / "checkpoints").mkdir(exist_ok=True)
            cfg = {"trainer": {"max_steps": 10}, "sampler": {"name": "ddim", "steps": 5, "eta": 0.0, "guidance": 0.8}}
            torch.save({"global_step": 10, "diffrop_config": cfg}, run / "checkpoints" / "last.ckpt")
        sys.exit(1 if fail else 0)
    if args[0] == "src/eval.py":
        out = Path(kv["hydra.run.dir"])
        out.mkdir(parents=True, exist_ok=True)
        n = int(kv["eval.num_samples"])
        metrics = {"fid": 1.0, "per_shot": {g: {"fid": 2.0} for g in ("many", "med", "few")}}
        # eval.py samples with the checkpoint's own recipe (build.eval_sampler); torch.save's zip holds a plain
        # pickle of this dict, read without importing torch (seconds per call on a busy machine)
        import pickle, zipfile
        with zipfile.ZipFile(kv["ckpt_path"]) as z:
            blob = pickle.loads(z.read(next(n for n in z.namelist() if n.endswith("/data.pkl"))))
        recipe = blob["diffrop_config"]["sampler"]
        sampler = {"name": recipe["name"], "steps": recipe["steps"], "guidance_scale": recipe["guidance"]}
        (out / "results.json").write_text(json.dumps({"metrics": metrics, "num_samples": n, "sampler": sampler}))
    """
)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    script = tmp_path / "fake_python.py"
    script.write_text(FAKE)
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {script} "$@"\n')
    wrapper.chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the table's W&B run: tests/test_report_wandb.py
    monkeypatch.chdir(REPO)  # the driver reads experiments/paper_numbers.yaml relative to the repository

    def run(table: str, fail: str = "", **kw) -> tuple[str, list[list[str]]]:
        calls.write_text("")
        monkeypatch.setenv("FAKE_FAIL", fail)
        opts = Options(root=tmp_path / "runs", python=str(wrapper), out=tmp_path / "results", **kw)
        Driver(table, opts).run()
        rendered = opts.out / ("smoke" if opts.smoke else "") / f"{table}.md"
        md = rendered.read_text() if rendered.is_file() else ""  # a dry run writes none
        return md, [json.loads(line) for line in calls.read_text().splitlines()]

    return run


@pytest.mark.slow
def test_driver_trains_evaluates_then_skips_finished_work(fake, tmp_path):
    md, calls = fake("table4")
    train = [c for c in calls if c[0] == "src/train.py"]
    assert len(train) == 1 and "-m" in train[0]  # one Hydra multirun over the missing models
    swept = next(a for a in train[0] if a.startswith("experiment=")).split("=", 1)[1].split(",")
    assert sorted(swept) == ["cifar10lt/ddpm", "cifar10lt/ddpm_pcl", "cifar10lt/ddpm_reweight"]
    assert "name=table4" in train[0]  # the W&B group
    evals = [c for c in calls if c[0] == "src/eval.py"]
    assert len(evals) == 3 and all("eval.num_samples=50000" in c for c in evals)
    assert not any(a.startswith("sampler") for c in evals for a in c)  # eval.py reads the checkpoint's recipe
    assert "Cells: 3 done, 0 missing, 0 FAILED" in md and "1.00 (paper 5.76, -4.76)" in md
    md2, calls2 = fake("table4")
    assert calls2 == [] and md2 == md  # nothing left to do
    # Table 2 reuses the three models it shares with Table 4: only the new ones are trained
    _, calls3 = fake("table2")
    swept = next(a for a in calls3[0] if a.startswith("experiment=")).split("=", 1)[1].split(",")
    assert "cifar10lt/ddpm" not in swept and "cifar10lt/cbdm" in swept and len(swept) == 6


@pytest.mark.slow
def test_an_evaluation_another_table_ran_is_copied_not_rerun(fake, tmp_path):
    """Tables 4 and 5 share the 50k-sample evaluations of CIFAR10LT DDPM and DDPM + PCL (same command, same
    checkpoint): Table 5 copies them. A checkpoint written since (trained further) is evaluated again."""
    fake("table4")
    runs = tmp_path / "runs"
    md, calls = fake("table5")
    evaluated = {
        next(a for a in c if a.startswith("ckpt_path=")).split("/models/")[1]
        for c in calls
        if c[0] == "src/eval.py"
    }
    shared = {"cifar10lt__ddpm/checkpoints/last.ckpt", "cifar10lt__ddpm_pcl/checkpoints/last.ckpt"}
    assert len(evaluated) == 6 and not evaluated & shared
    assert "Cells: 8 done, 0 missing, 0 FAILED" in md
    for cell5, cell4 in [("cifar10lt__ddpm", "cifar10lt__ddpm"), ("cifar10lt__exp", "cifar10lt__ddpm_pcl")]:
        copied, source = runs / "table5" / cell5 / "eval", runs / "table4" / cell4 / "eval"
        assert json.loads(results_path(copied).read_text()) == json.loads(results_path(source).read_text())
    ckpt = model_dir(runs, "cifar10lt/ddpm") / "checkpoints" / "last.ckpt"
    torch.save(torch.load(ckpt, weights_only=False), ckpt)  # rewritten: another file now
    (runs / "table1" / "cifar10lt__ddpm").mkdir(parents=True)
    _, calls = fake("table1")
    evaluated = [c for c in calls if c[0] == "src/eval.py" and any("/cifar10lt__ddpm/" in a for a in c)]
    assert len(evaluated) == 1  # not copied from the evaluation of the older file


def test_driver_says_cell_stage_eta_and_log(fake, tmp_path, capsys):
    fake("table4")
    out = capsys.readouterr().out
    logs = tmp_path / "runs" / "logs"
    assert f"[reproduce table4] train 3 models (log {logs / 'table4-train-0.log'})" in out
    cells = [c.cell for c in load_cells("table4")]
    first = f"[reproduce table4] cell 1/3 {cells[0]}: eval (log {logs / f'table4-eval-{cells[0]}.log'})"
    assert first in out  # no ETA before a cell has finished
    second = next(
        ln for ln in out.splitlines() if ln.startswith(f"[reproduce table4] cell 2/3 {cells[1]}: eval")
    )
    assert re.search(r", ETA \d+:\d\d:\d\d for 2 cells\)$", second)
    assert "cell 3/3" in out and "ETA" in out.split("cell 3/3", 1)[1].splitlines()[0]


@pytest.mark.slow
def test_failed_training_marks_its_cells_failed_and_is_retried(fake, tmp_path):
    md, _ = fake("table4", fail="cifar10lt/ddpm_reweight")
    row = next(line for line in md.splitlines() if "Reweighting" in line)
    assert "FAILED" in row and "RuntimeError: boom" in md
    assert "Cells: 2 done, 0 missing, 1 FAILED" in md
    state, detail = training_state(model_dir(tmp_path / "runs", "cifar10lt/ddpm_reweight"))
    assert state == "failed" and "boom" in detail
    md, calls = fake("table4")  # fixed: retried (train only the failed model), FAILED gone
    assert next(c for c in calls if c[0] == "src/train.py")[2] == "experiment=cifar10lt/ddpm_reweight"
    assert "FAILED [" not in md and "Cells: 3 done" in md


def test_unfinished_checkpoint_is_trained_further(tmp_path):
    run = tmp_path / "m"
    (run / "checkpoints").mkdir(parents=True)
    torch.save(
        {"global_step": 4, "diffrop_config": {"trainer": {"max_steps": 10}}}, run / "checkpoints/last.ckpt"
    )
    assert training_state(run) == ("partial", "step 4 of 10")
    assert training_state(run, max_steps=4)[0] == "done"
    assert training_state(tmp_path / "none")[0] == "missing"


@pytest.mark.parametrize(
    "recipe",
    [
        {"name": "dpmpp2m", "steps": 20, "eta": None, "guidance": 1.6},
        {"name": "ddim", "steps": 50, "eta": 0.5, "guidance": 0.8},
    ],
)
def test_eval_command_uses_the_models_own_sampler(tmp_path, recipe):
    """The evaluation of a cell samples with the sampler stored in the model's checkpoint: the driver passes no
    sampler flag and eval's sampler resolution (build.eval_sampler) returns the stored recipe, null eta included."""
    from diffrop.build import eval_sampler
    from diffrop.diffusion.sampling import SamplerSpec
    from diffrop.paper.cells import Cell

    cell = Cell("table4", "cifar10lt__ddpm", "cifar10lt/ddpm", 100)
    ckpt = model_dir(tmp_path, cell.experiment) / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"global_step": 1, "diffrop_config": {"sampler": recipe}}, ckpt)
    args = Driver("table4", Options(root=tmp_path)).eval_command(cell, tmp_path / "eval", 100)[2:]
    overrides = [a for a in args if not a.startswith("hydra.")]
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("eval", overrides=overrides)
    spec = SamplerSpec(**eval_sampler(OmegaConf.to_container(cfg.sampler), recipe, overrides))
    assert (spec.name, spec.steps, spec.eta, spec.guidance) == tuple(recipe.values())


@pytest.mark.parametrize("smoke", [False, True])
def test_dry_run_shows_missing_cells_and_the_commands_and_writes_nothing(
    fake, tmp_path, capsys, recwarn, smoke
):
    before = sorted(tmp_path.rglob("*"))
    _, calls = fake("table1", dry_run=True, launcher="slurm", devices=8, smoke=smoke)
    assert calls == []  # nothing executed
    assert (
        sorted(p for p in tmp_path.rglob("*") if p.name != "calls.jsonl") == before
    )  # no runs root, no table
    out = capsys.readouterr().out
    assert "Cells: 0 done, 11 missing, 0 FAILED" in out
    assert "hydra/launcher=slurm" in out and "trainer=ddp" in out and "trainer.devices=8" in out
    assert ("smoke_inception.pt" in out) == smoke  # the smoke extractor is named in the commands, not written
    assert [str(w.message) for w in recwarn if "jit" in str(w.message)] == []  # nothing scripted: no warnings


def test_local_ddp_uses_torchrun_per_model(tmp_path):
    opts = Options(root=tmp_path, devices=4)
    cmds = Driver("table4", opts).train_commands(["cifar10lt/ddpm", "cifar10lt/ddpm_pcl"])
    assert len(cmds) == 2 and all("--nproc_per_node=4" in c and "trainer=ddp" in c for c in cmds)


@pytest.mark.slow
@pytest.mark.first
def test_smoke_every_result_end_to_end(tmp_path):
    """`make smoke`: every `make reproduce-* SMOKE=1` target for real (train, evaluate, classify, render) on CPU.

    `-o install` and PY: the make targets run with this interpreter and never create a .venv of their own."""
    env = child_env(OMP_NUM_THREADS="1")
    runs, out = tmp_path / "runs", tmp_path / "results"
    cmd = [
        "make",
        "-s",
        "-o",
        "install",
        "smoke",
        f"SMOKE_RUNS={runs}",
        f"PY={sys.executable}",
        f"ARGS=--out {out}",
    ]
    subprocess.run(cmd, cwd=REPO, env=env, check=True, timeout=1500)
    tables = {"table1": 11, "table2": 8, "table3": 6, "table4": 3, "table5": 8, "fig4a": 4, "fig4b": 4}
    for table, cells in tables.items():
        md = (out / "smoke" / f"{table}.md").read_text()
        assert "SMOKE" in md and f"0 missing, 0 FAILED (of {cells})" in md, (table, md[-300:])
    results = json.loads(results_path(runs / "table2/cifar100lt__cbdm_pcl/eval").read_text())
    assert results["num_samples"] == 60 and {"many", "med", "few"} <= set(results["metrics"]["per_shot"])
    assert yaml.safe_load((runs / "models/multirun.yaml").read_text())  # a Hydra multirun trained them
    assert list((out / "smoke").glob("fig4b*.png")) and list((out / "smoke").glob("samples_*.png"))
