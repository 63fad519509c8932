"""Killing a driver (reproduce, quickstart study, sample grids) takes its training/eval children down with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.train_utils import child_env

# The child: starts a grandchild (like DDP or data-loader workers), writes both pids to its log, sleeps.
# IGNORE_TERM=1 makes it ignore SIGTERM, as a hung child would.
CHILD = """
import os, signal, subprocess, sys, time
if os.environ.get("IGNORE_TERM") == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(os.getpid(), grandchild.pid, flush=True)
time.sleep(600)
"""

# Drivers: the helper itself, and the reproduce driver's stage runner (used by experiments/sample_grids.py too).
DRIVERS = {
    "run_logged": """
import sys
from pathlib import Path
from diffrop.runtime.children import run_logged
sys.exit(run_logged([sys.executable, "-c", sys.argv[2]], Path(sys.argv[1]), grace=float(sys.argv[3])))
""",
    "Driver.execute": """
import sys
from pathlib import Path
from diffrop.paper.cells import Options
from diffrop.paper.reproduce import Driver
import diffrop.runtime.children
diffrop.runtime.children.GRACE_S = float(sys.argv[3])
log = Path(sys.argv[1])
sys.exit(Driver("t", Options(root=log.parent.parent)).execute([sys.executable, "-c", sys.argv[2]], log.stem, "stage"))
""",
}


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as dead)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def wait_dead(pids: list[int], timeout: float = 20) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def start_driver(tmp_path: Path, driver: str, grace: float = 5, ignore_term: bool = False):
    """The driver process and its child's and grandchild's pids, once both run."""
    log = tmp_path / "logs" / "child.log"
    env = child_env(IGNORE_TERM="1" if ignore_term else "0")
    cmd = [sys.executable, "-c", DRIVERS[driver], str(log), CHILD, str(grace)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (log.is_file() and log.read_text().strip()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    pids = [int(p) for p in log.read_text().split()]
    assert all(alive(p) for p in pids)
    return proc, pids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
@pytest.mark.parametrize(
    ("driver", "sig"), [("run_logged", signal.SIGINT), ("Driver.execute", signal.SIGTERM)]
)
def test_signal_to_driver_stops_child_and_its_group(tmp_path, driver, sig):
    proc, pids = start_driver(tmp_path, driver)
    try:
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + sig
        assert f"{sig.name}: stopped child pid {pids[0]}" in err
        assert "Traceback" not in err
        assert wait_dead(pids) == []
    finally:
        for p in pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_child_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path):
    proc, pids = start_driver(tmp_path, "run_logged", grace=1, ignore_term=True)
    try:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM
        assert wait_dead(pids) == []
    finally:
        for p in pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_sigkilled_driver_still_stops_its_direct_child(tmp_path):
    proc, pids = start_driver(tmp_path, "run_logged")
    try:
        proc.kill()
        proc.communicate(timeout=60)
        assert wait_dead(pids[:1]) == []  # the grandchild is out of reach of a SIGKILLed driver
    finally:
        for p in pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)


def test_exit_code_and_output_of_a_normal_child(tmp_path):
    from diffrop.runtime.children import run_logged

    log = tmp_path / "out.log"
    rc = run_logged([sys.executable, "-c", "import sys; print('hi'); sys.exit(3)"], log)
    assert rc == 3
    assert log.read_text() == "hi\n"
