"""One process per run directory: a second one stops at once naming the holder; a SIGKILLed holder blocks nothing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from diffrop import build
from diffrop.runtime.run_lock import RunDirLocked, run_dir_lock
from tests.helpers.train_utils import (
    REPO,
    TINY_RUN_OVERRIDES,
    TRAIN_PY,
    child_env,
    train_env,
    train_in_process,
)

# A process that takes the lock, says so, and sleeps until killed.
HOLDER = """
import sys, time
from pathlib import Path
from diffrop.runtime.run_lock import run_dir_lock
with run_dir_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


def start_holder(run_dir) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True, env=child_env()
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_holder_is_refused_with_pid_and_host(tmp_path):
    with run_dir_lock(tmp_path), pytest.raises(RunDirLocked) as err, run_dir_lock(tmp_path):
        pass
    message = str(err.value)
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
    assert "\n" not in message
    with run_dir_lock(tmp_path):  # released on exit
        pass


def test_other_ddp_ranks_do_not_lock(tmp_path):
    with run_dir_lock(tmp_path), run_dir_lock(tmp_path, rank=1) as lock:
        assert lock is None


@pytest.mark.slow
def test_train_refuses_a_run_dir_held_by_a_live_process_then_resumes_after_sigkill(tmp_path):
    holder = start_holder(tmp_path)
    try:
        env = train_env()
        env.pop("HYDRA_FULL_ERROR", None)
        args = [*TINY_RUN_OVERRIDES, "trainer.max_steps=2", f"hydra.run.dir={tmp_path}"]
        proc = subprocess.run(
            [sys.executable, str(TRAIN_PY), *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert lines == [lines[-1]] and lines[0].startswith("error: run directory"), proc.stderr
        assert f"pid {holder.pid} on host {socket.gethostname()}" in lines[0]
        assert not (tmp_path / "FAILED").exists()  # the holder's run is not marked failed by the loser
        # stopped before any work: only Hydra's own files next to the holder's lock (no data summary, no metrics)
        assert {p.name for p in tmp_path.iterdir()} <= {".lock", ".hydra", "train.log"}
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the kernel dropped the dead holder's lock: the same command now trains
    train_in_process([*TINY_RUN_OVERRIDES, "trainer.max_steps=2"], tmp_path)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_train_holds_the_lock_while_it_runs(tmp_path, monkeypatch):
    seen = []
    build_module = build.build_module

    def probe(cfg, datamodule):  # called inside the run: the lock must be taken by now
        with pytest.raises(RunDirLocked), run_dir_lock(tmp_path):
            pass
        seen.append(True)
        return build_module(cfg, datamodule)

    monkeypatch.setattr(build, "build_module", probe)
    train_in_process([*TINY_RUN_OVERRIDES, "trainer.max_steps=1"], tmp_path)
    assert seen == [True]
    with run_dir_lock(tmp_path):  # and released when the run ended
        pass
