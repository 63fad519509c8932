"""The Optuna search over the PCL strength (configs/hparams_search/pcl_tau.yaml) runs end to end on digits and
reports the trial with the lowest final val/fid as best."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import yaml

from diffrop.paper.smoke import write_smoke_extractor
from tests.helpers.train_utils import REPO, THREADS, child_env


@pytest.mark.slow
def test_two_trial_optuna_sweep_reports_its_best_trial(tmp_path) -> None:
    weights = write_smoke_extractor(tmp_path / "features.pt")  # random stand-in for Inception (offline)
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable, str(REPO / "src" / "train.py"), "hparams_search=pcl_tau", "experiment=quickstart",
        "loss=pcl_exp", "trainer.max_steps=3", "data.batch_size=16", "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2", "callbacks.periodic_fid.num_samples=20",
        "sampler.steps=2", "callbacks.periodic_fid.extractor=fid-helper",
        f"callbacks.periodic_fid.inception_weights={weights}", "callbacks.periodic_fid.reference_per_class=5",
        f"callbacks.periodic_fid.reference_cache={tmp_path / 'refs'}", "callbacks.sample_grid.every_n_steps=0",
        "~callbacks.progress_bar", f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    env = child_env(OMP_NUM_THREADS=str(THREADS), PYTHONWARNINGS="ignore")
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    trials = {}
    for trial in sorted(p for p in sweep.iterdir() if p.is_dir()):
        with open(trial / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        fids = [float(r["val/fid"]) for r in rows if r.get("val/fid")]
        # 3 steps log rows 0..2: the final FID shares the last step's row, none past it (issue 28: "step 601")
        assert max(int(r["step"]) for r in rows) == 2
        assert [r["step"] for r in rows if r.get("val/fid")] == ["2"]
        overrides = dict(
            o.split("=", 1) for o in yaml.safe_load((trial / ".hydra/overrides.yaml").read_text())
        )
        trials[trial.name] = (fids[-1], overrides)
    assert len(trials) == 2
    best_fid, best_overrides = min(trials.values(), key=lambda v: v[0])
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(best_fid, rel=1e-6)
    for key in ("tau.tau0", "tau.temperature", "loss.terms.pcl.reduction"):
        assert str(result["best_params"][key]) == best_overrides[key]
    assert f"Best value: {result['best_value']}" in done.stderr + done.stdout
