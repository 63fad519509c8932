"""README's resume line, ``python src/train.py hydra.run.dir=<run>``, with nothing else: the run's stored overrides
decide what it is. A finished run is left byte for byte as it was, a killed one trains to its end, and a command
that would change a stored run is one error line that writes nothing."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from diffrop.runtime.stored_run import StoredRunMismatch, adopt_stored_run, unfinished_twin
from tests.helpers.train_utils import REPO, TRAIN_PY, load_ckpt, train_env

# the quickstart, cut to a few steps; what `make quickstart` stores plus the cuts
QUICK = ["experiment=quickstart", "sampler.steps=2", "callbacks.sample_grid.per_class=1",
         "callbacks.checkpoint.every_n_train_steps=3", "callbacks.progress_bar.kind=log"]  # fmt: skip


def train(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(TRAIN_PY), *args],
        cwd=REPO, env=train_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def snapshot(run: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(run)): (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("resume") / "finished"
    rc, _, err = finish(train(*QUICK, "trainer.max_steps=3", f"hydra.run.dir={run}"))
    assert rc == 0, err[-3000:]
    return run


@pytest.mark.slow
def test_resuming_a_finished_run_says_so_and_changes_nothing(finished):
    before = snapshot(finished)
    rc, out, err = finish(train(f"hydra.run.dir={finished}"))
    assert rc == 0, err[-3000:]
    assert "is finished (step 3 of trainer.max_steps=3)" in out
    assert snapshot(finished) == before  # no FAILED, no rewritten .hydra/*.yaml, no new checkpoint


@pytest.mark.slow
def test_a_command_that_changes_a_stored_run_is_one_error_line_and_writes_nothing(finished):
    before = snapshot(finished)
    rc, _, err = finish(train(f"hydra.run.dir={finished}", "data.imb_factor=0.5", "experiment=quickstart"))
    assert rc == 1
    assert err.strip().count("\n") == 0 and err.startswith("error: "), err
    assert "data.imb_factor (stored: unset, given: 0.5)" in err
    assert "experiment" not in err  # the stored value repeated is no change
    assert snapshot(finished) == before


@pytest.mark.slow
def test_a_killed_run_resumes_to_its_end_from_its_directory_alone(tmp_path):
    run = tmp_path / "killed"
    proc = train(*QUICK, "trainer.max_steps=300", f"hydra.run.dir={run}")
    last = run / "checkpoints" / "last.ckpt"
    while not last.exists():  # the first periodic checkpoint (step 3)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_ckpt(last)["global_step"] < 300
    stored = (run / ".hydra" / "overrides.yaml").read_text()

    rc, out, err = finish(train(f"hydra.run.dir={run}"))
    assert rc == 0, err[-3000:]
    assert load_ckpt(last)["global_step"] == 300
    assert (
        "weights_only" not in out + err
    )  # every save says what it stores (Lightning logs when one does not)
    assert (run / ".hydra" / "overrides.yaml").read_text() == stored
    assert not (run / "FAILED").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "Ctrl-C"]
)
def test_a_stopped_run_is_resumed_by_the_command_its_last_line_prints(tmp_path, sig, code):
    """The default timestamped run dir (no hydra.run.dir): the stop's last line is the way on, run as printed."""
    logs = tmp_path / "logs"
    proc = train(
        *QUICK,
        "trainer.max_steps=60",
        "callbacks.checkpoint.every_n_train_steps=1000",
        f"paths.log_dir={logs}",
    )
    while not list(logs.glob("train/runs/*/metrics.csv")):  # training has started
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(sig)
    rc, _, err = finish(proc)
    assert rc == code, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: stopped by ") and "Traceback" not in err, err[-3000:]
    (run,) = logs.glob("train/runs/*")
    assert "Traceback" not in (run / "FAILED").read_text()
    command = shlex.split(last.split(" with: ", 1)[1])
    assert command == [
        "python",
        "src/train.py",
        f"hydra.run.dir={run}",
    ]  # the test's run dir is outside the repo

    rc, _, err = finish(train(*command[2:]))
    assert rc == 0, err[-3000:]
    assert load_ckpt(run / "checkpoints" / "last.ckpt")["global_step"] == 60
    assert list(logs.glob("train/runs/*")) == [run] and not (run / "FAILED").exists()


def test_the_same_command_without_a_directory_names_the_unfinished_run_it_would_not_resume(tmp_path):
    logs = tmp_path / "logs"
    given = ["experiment=quickstart", f"paths.log_dir={logs}"]
    old, new, other = (_stored(logs / "train" / "runs" / name, overrides) for name, overrides in
                       [("2026-01-01", given), ("2026-01-02", given), ("2026-01-03", [*given, "seed=1"])])  # fmt: skip
    for run, step in ((old, 5), (new, 7), (other, 3)):
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"trainer": {"max_steps": 10}}))
        (run / "checkpoints").mkdir()
        torch.save({"global_step": step}, run / "checkpoints" / "last.ckpt")
    note = unfinished_twin(given)
    assert f"{new} is an unfinished run of these overrides (step 7 of 10)" in note
    assert note.endswith(f"python src/train.py hydra.run.dir={new}")
    torch.save({"global_step": 10}, new / "checkpoints" / "last.ckpt")  # finished: the older one is named
    assert f"{old} is an unfinished run" in unfinished_twin(given)
    assert unfinished_twin([*given, "seed=2"]) is None  # no run of these overrides
    assert unfinished_twin([*given, f"hydra.run.dir={old}"]) is None  # a directory was given


def _stored(run: Path, overrides: list[str]) -> Path:
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return run


def test_stored_overrides_come_first_and_max_steps_or_ckpt_path_may_change(tmp_path):
    run = _stored(
        tmp_path / "run", ["experiment=quickstart", "trainer.max_steps=10", "~callbacks.progress_bar"]
    )
    argv, finished = adopt_stored_run(["--cfg", "job", f"hydra.run.dir={run}", "trainer.max_steps=20"])
    assert argv == ["--cfg", "job", "experiment=quickstart", "trainer.max_steps=20", "~callbacks.progress_bar",
                    f"hydra.run.dir={run}"]  # fmt: skip
    assert finished is None
    argv, _ = adopt_stored_run([f"hydra.run.dir={run}", "ckpt_path=last", "~callbacks.progress_bar"])
    assert argv[-2:] == ["ckpt_path=last", f"hydra.run.dir={run}"]
    argv, _ = adopt_stored_run([f"hydra.run.dir={run}", "experiment=paper", "experiment=quickstart"])
    assert "experiment=paper" not in argv  # a key given twice: the last value counts, as in Hydra


def test_a_run_stored_before_a_setting_was_renamed_or_retired_still_resumes(tmp_path):
    """periodic FID's cache_dir is eval's reference_cache now; the grids' own sampler steps / guidance are gone (the
    run's sampler group draws them): the stored overrides are read in today's names, and Hydra composes them."""
    run = _stored(tmp_path / "run", ["experiment=quickstart", "callbacks=periodic_fid", "callbacks.sample_grid.steps=2",
                                     "callbacks.periodic_fid.cache_dir=/refs", "callbacks.periodic_fid.guidance=1"])  # fmt: skip
    argv, _ = adopt_stored_run(["--cfg", "job", f"hydra.run.dir={run}"])
    assert argv == ["--cfg", "job", "experiment=quickstart", "callbacks=periodic_fid",
                    "callbacks.periodic_fid.reference_cache=/refs", f"hydra.run.dir={run}"]  # fmt: skip
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=argv[2:-1])
    assert cfg.callbacks.periodic_fid.reference_cache == "/refs"


@pytest.mark.parametrize(
    "given", [["seed=1"], ["experiment=paper"], ["callbacks.progress_bar=null"], ["ckpt_path=null"]]
)
def test_any_other_change_is_refused(tmp_path, given):
    run = _stored(tmp_path / "run", ["experiment=quickstart", "~callbacks.progress_bar"])
    with pytest.raises(StoredRunMismatch, match=given[0].split("=")[0]):
        adopt_stored_run([f"hydra.run.dir={run}", *given])


def test_new_directories_and_multiruns_pass_through(tmp_path):
    argv = [f"hydra.run.dir={tmp_path / 'new'}", "seed=1"]
    assert adopt_stored_run(argv) == (argv, None)
    run = _stored(tmp_path / "run", ["seed=0"])
    argv = ["-m", f"hydra.run.dir={run}", "seed=1,2"]
    assert adopt_stored_run(argv) == (argv, None)
