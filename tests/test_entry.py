"""``guarded_run``, the run lifecycle of src/train.py, src/eval.py and src/classify.py, on its own: a user error is one
``error:`` line and exit 1, a failure leaves FAILED (rank 0 only), a refused process writes nothing, W&B is closed."""

from __future__ import annotations

import signal
import sys
import types

import pytest
from lightning.pytorch.utilities.exceptions import SIGTERMException

from diffrop.runtime.entry import guarded_run
from diffrop.runtime.run_lock import RunDirLocked, run_dir_lock


@pytest.fixture
def wandb_finished(monkeypatch) -> list[int]:
    """A stand-in ``wandb`` module (as if a W&B logger had imported it); counts ``finish`` calls."""
    calls: list[int] = []
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(finish=lambda: calls.append(1)))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_a_user_error_is_one_line_exit_1_and_failed(tmp_path, capsys, wandb_finished):
    with pytest.raises(SystemExit) as done, guarded_run(tmp_path):
        raise ValueError("tau.tau0 must be > 0")
    assert done.value.code == 1
    assert capsys.readouterr().err == "error: tau.tau0 must be > 0\n"
    failed = (tmp_path / "FAILED").read_text()
    assert failed.startswith("ValueError: tau.tau0 must be > 0\n") and "Traceback" in failed
    assert wandb_finished == [1]


def test_in_a_multirun_the_error_is_re_raised_for_hydra(tmp_path, capsys, wandb_finished):
    with pytest.raises(ValueError), guarded_run(tmp_path, multirun=True):
        raise ValueError("bad")
    assert capsys.readouterr().err == "error: bad\n"
    assert (tmp_path / "FAILED").read_text().startswith("ValueError: bad")


def test_an_unexpected_error_keeps_its_traceback_and_names_the_slurm_job(
    tmp_path, monkeypatch, wandb_finished
):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    with pytest.raises(RuntimeError), guarded_run(tmp_path):
        raise RuntimeError("boom")
    lines = (tmp_path / "FAILED").read_text().splitlines()
    assert lines[:2] == ["RuntimeError: boom", "slurm_job_id: 77"]
    assert wandb_finished == [1]


def test_a_finished_body_removes_an_earlier_failed(tmp_path, wandb_finished):
    (tmp_path / "FAILED").write_text("ValueError: an earlier attempt\n")
    with guarded_run(tmp_path) as lock:
        assert lock == tmp_path / ".lock"
        with pytest.raises(RunDirLocked), run_dir_lock(tmp_path):  # held while the body runs
            pass
    assert not (tmp_path / "FAILED").exists() and wandb_finished == [1]
    with run_dir_lock(tmp_path):  # released after it
        pass


def test_other_ranks_neither_lock_nor_write(tmp_path, wandb_finished):
    (tmp_path / "FAILED").write_text("ValueError: rank 0's to clear\n")
    with run_dir_lock(tmp_path), guarded_run(tmp_path, rank=1) as lock:  # rank 0 holds the dir
        assert lock is None
    assert (tmp_path / "FAILED").read_text() == "ValueError: rank 0's to clear\n"
    (tmp_path / "FAILED").unlink()
    with pytest.raises(SystemExit), guarded_run(tmp_path, rank=1):
        raise ValueError("bad")
    assert not (tmp_path / "FAILED").exists()


def test_a_refused_process_writes_nothing_and_runs_nothing(tmp_path, capsys, wandb_finished):
    ran = []
    with run_dir_lock(tmp_path), pytest.raises(SystemExit) as done, guarded_run(tmp_path):
        ran.append(True)
    assert done.value.code == 1 and not ran
    assert capsys.readouterr().err.startswith("error: run directory")
    assert not (tmp_path / "FAILED").exists()


RESUME = "resume it from step 7 with: python src/train.py hydra.run.dir=logs/train/runs/x"


def test_sigterm_exits_143_names_the_resume_command_and_leaves_failed_until_it_finishes(
    tmp_path, capsys, wandb_finished
):
    with pytest.raises(SystemExit) as done, guarded_run(tmp_path, resume=lambda: RESUME):
        raise SIGTERMException
    assert done.value.code == 128 + signal.SIGTERM
    assert capsys.readouterr().err == f"error: stopped by SIGTERM; {RESUME}\n"
    assert (tmp_path / "FAILED").read_text() == "SIGTERMException: stopped by SIGTERM\n"


def lightning_ctrl_c() -> None:
    """What Trainer.fit does on Ctrl-C: it catches the KeyboardInterrupt and exits 1 in its place."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        sys.exit(1)


@pytest.mark.parametrize("body", [lightning_ctrl_c, lambda: signal.raise_signal(signal.SIGINT)])
def test_ctrl_c_exits_130_with_the_resume_command_and_no_traceback(tmp_path, capsys, wandb_finished, body):
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # pytest-xdist workers ignore SIGINT
    try:
        with pytest.raises(SystemExit) as done, guarded_run(tmp_path, resume=lambda: RESUME):
            body()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert done.value.code == 130  # 128 + SIGINT, as a shell reports a Ctrl-C
    assert capsys.readouterr().err == f"error: stopped by Ctrl-C; {RESUME}\n"
    assert (tmp_path / "FAILED").read_text() == "KeyboardInterrupt: stopped by Ctrl-C\n"


def test_a_crash_prints_the_resume_command_a_user_error_does_not(tmp_path, capsys, wandb_finished):
    with pytest.raises(RuntimeError), guarded_run(tmp_path, resume=lambda: RESUME):
        raise RuntimeError("boom")
    assert capsys.readouterr().err == f"{RESUME}\n"
    with pytest.raises(SystemExit), guarded_run(tmp_path, resume=lambda: RESUME):
        raise ValueError("data.root does not exist")
    assert capsys.readouterr().err == "error: data.root does not exist\n"


def test_a_failed_start_in_a_disposable_dir_leaves_no_folder(tmp_path, capsys, wandb_finished):
    run = tmp_path / "runs" / "2026-01-01_00-00-00"
    with pytest.raises(SystemExit) as done, guarded_run(run, disposable=lambda: True):
        (run / ".hydra").mkdir()
        raise ValueError("data.root does not exist")
    assert done.value.code == 1 and capsys.readouterr().err == "error: data.root does not exist\n"
    assert not run.exists()
    with pytest.raises(SystemExit), guarded_run(run, disposable=lambda: False):  # something worth keeping
        raise ValueError("data.root does not exist")
    assert (run / "FAILED").is_file()
