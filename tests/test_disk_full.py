"""A full disk during any atomic save: one line saying so and where, the previous file intact, no temp file left.

The real thing needs a small filesystem: a tmpfs, mounted when the tests run as root (else those tests skip). The
same behaviour is also checked everywhere by a file whose writes fail with ENOSPC after a byte budget.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import diffrop.runtime.atomic_write as aw
from diffrop.evaluation.metrics import ReferenceCache
from diffrop.runtime.atomic_write import DiskFullError, atomic_write
from diffrop.training.checkpoint_io import atomic_save
from tests.helpers.disk import tmpfs
from tests.helpers.train_utils import REPO, TINY_RUN_OVERRIDES, TRAIN_PY, load_ckpt, train_env


class FillingFile:
    """A file whose writes fail with ENOSPC once ``budget`` bytes are written, as on a nearly full disk."""

    def __init__(self, f, budget: int) -> None:
        self.f, self.budget = f, budget

    def write(self, data) -> int:
        if len(data) > self.budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.fixture
def nearly_full(monkeypatch):
    real = os.fdopen
    monkeypatch.setattr(aw.os, "fdopen", lambda fd, mode: FillingFile(real(fd, mode), budget=4096))


def check_full_disk_error(err: BaseException, path: Path) -> None:
    message = str(err)
    assert "no space left on device" in message and str(path) in message
    assert "\n" not in message and "inline_container" not in message


def test_checkpoint_on_a_full_tmpfs(tmp_path):
    with tmpfs(tmp_path / "disk", "1m") as disk:
        path = disk / "checkpoints" / "last.ckpt"
        atomic_save({"global_step": 1, "w": torch.arange(50_000.0)}, path)  # 200 kB
        with pytest.raises(DiskFullError) as err:
            atomic_save({"global_step": 2, "w": torch.zeros(500_000)}, path)  # 2 MB: does not fit
        check_full_disk_error(err.value, path)
        assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temp file behind
        ckpt = load_ckpt(path)
        assert ckpt["global_step"] == 1 and torch.equal(ckpt["w"], torch.arange(50_000.0))


@pytest.mark.parametrize("mode", ["wb", "w"])
def test_any_atomic_write_on_a_nearly_full_disk(tmp_path, nearly_full, mode):
    path = tmp_path / "results.json"
    path.write_text("previous")
    with pytest.raises(DiskFullError) as err, atomic_write(path, mode) as f:
        f.write(b"x" * 10_000 if mode == "wb" else "x" * 10_000)
    check_full_disk_error(err.value, path)
    assert path.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_torch_save_and_reference_cache_on_a_nearly_full_disk(tmp_path, nearly_full):
    path = tmp_path / "last.ckpt"
    with pytest.raises(DiskFullError) as err:
        atomic_save({"w": torch.zeros(100_000)}, path)
    check_full_disk_error(err.value, path)
    cache = ReferenceCache(tmp_path / "refs")
    with pytest.raises(DiskFullError, match="no space left on device"):
        cache.save("k", torch.zeros(1000, 8), torch.zeros(1000))
    assert not path.exists() and list((tmp_path / "refs").iterdir()) == []


def test_other_write_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(ZeroDivisionError), atomic_write(tmp_path / "a") as f:
        f.write(b"partial")
        _ = 1 / 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_train_on_a_disk_that_fills_up_keeps_the_last_checkpoint(tmp_path):
    """The tiny run's checkpoint is ~11.5 MB: the first save fits in 16 MB, the second (old + new) does not."""
    with tmpfs(tmp_path / "disk", "16m") as disk:
        run = disk / "run"
        env = train_env()
        env.pop("HYDRA_FULL_ERROR", None)
        args = [*TINY_RUN_OVERRIDES, "trainer.max_steps=3", "callbacks.checkpoint.every_n_train_steps=1"]
        proc = subprocess.run(
            [sys.executable, str(TRAIN_PY), *args, f"hydra.run.dir={run}"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        last = run / "checkpoints" / "last.ckpt"
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr and "inline_container" not in proc.stderr, proc.stderr[-3000:]
        error = proc.stderr.strip().splitlines()[-1]  # after Lightning's start-up lines
        assert error.startswith("error: no space left on device while writing") and str(last) in error
        assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]
        assert load_ckpt(last)["global_step"] == 1


def test_stale_temps_of_killed_writers_are_removed_and_nothing_else(tmp_path):
    from diffrop.runtime.atomic_write import remove_stale_temps

    stale = tmp_path / ".last.ckpt.1234-0badc0de.tmp"
    keep = [tmp_path / "last.ckpt", tmp_path / ".hidden", tmp_path / "notes.tmp", tmp_path / ".x.tmp"]
    for p in [stale, *keep]:
        p.write_text("x")
    assert remove_stale_temps(tmp_path) == [stale]
    assert sorted(tmp_path.iterdir()) == sorted(keep)
    assert remove_stale_temps(tmp_path / "missing") == []
