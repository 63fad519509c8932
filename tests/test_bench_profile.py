"""The training-step profile (benchmarks/profiling.py, ``bench.py --only profile``): the Chrome trace is written and
its breakdown partitions the step's wall time; the child-process worker (benchmarks/_worker.py) runs; the PRD k-means
section times both backends."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.profiling import trace_breakdown
from tests.helpers.train_utils import REPO, child_env, load_script


@pytest.fixture(scope="module")
def bench():
    return load_script(REPO / "benchmarks" / "bench.py", "diffrop_bench_profile")


def _x(name: str, cat: str, ts: float, dur: float) -> dict:
    return {"ph": "X", "name": name, "cat": cat, "ts": ts, "dur": dur}


def test_breakdown_of_a_hand_made_gpu_trace():
    """Two 100 us steps, W = 200 us. Kernels 10-40 and 30-60 (overlapping: 10-60 busy) and 110-190; the host is in a
    CUDA call 0-20 and in ops 70-80 and 100-105. compute = 50 + 80; dispatch gap (GPU idle, host in an op or call)
    = 0-10, 70-80, 100-105; host outside ops = 60-70, 80-100, 105-110, 190-200."""
    events = [
        _x("ProfilerStep#1", "user_annotation", 0, 100),
        _x("ProfilerStep#2", "user_annotation", 100, 100),
        _x("ProfilerStep#1", "gpu_user_annotation", 0, 150),  # ignored: the GPU copy of the span
        _x("k1", "kernel", 10, 30),
        _x("k2", "kernel", 30, 30),
        _x("k3", "kernel", 110, 80),
        _x("cudaLaunchKernel", "cuda_runtime", 0, 20),
        _x("aten::add", "cpu_op", 70, 10),
        _x("aten::mul", "cpu_op", 100, 5),
        _x("cudaDeviceSynchronize", "cuda_runtime", 190, 10),  # waiting, not dispatching: host outside ops
        {"ph": "M", "name": "process_name"},
    ]
    b = trace_breakdown({"traceEvents": events})
    assert b["steps"] == 2 and b["step_ms"] == pytest.approx(0.1) and b["timeline"] == "gpu"
    assert b["compute"] == pytest.approx(130 / 200)  # 10-60 and 110-190
    assert b["dispatch_gap"] == pytest.approx(25 / 200)  # 0-10, 70-80, 100-105
    assert b["host_outside_ops"] == pytest.approx(45 / 200)  # 60-70, 80-100, 105-110, 190-200
    assert b["host_in_ops"] == pytest.approx(35 / 200)
    with pytest.raises(ValueError, match="ProfilerStep"):
        trace_breakdown({"traceEvents": events[3:]})


@pytest.mark.slow
def test_profile_section_writes_a_trace_and_a_breakdown_that_sums_to_one(bench, tmp_path):
    """A real CPU profile of two Lightning steps of the tiny net."""
    trace = tmp_path / "trace.json.gz"
    argv = ["--only", "profile", "--model", "tiny", "--warmup", "1", "--profile-steps", "2"]
    assert bench.main([*argv, "--profile-trace", str(trace), "--out", str(tmp_path)]) == 0
    with gzip.open(trace, "rt") as f:
        events = json.load(f)["traceEvents"]
    steps = [e for e in events if e.get("cat") == "user_annotation" and e["name"].startswith("ProfilerStep#")]
    assert len(steps) == 2 and any(e.get("cat") == "cpu_op" for e in events)
    (result,) = Path(tmp_path).glob("cpu_*.json")
    (row,) = json.loads(result.read_text())["sections"]["profile"]
    parts = [row[k] for k in ("compute", "dispatch_gap", "host_outside_ops")]
    assert all(0.0 <= p <= 1.0 for p in [*parts, row["host_in_ops"]])
    assert sum(parts) == pytest.approx(1.0, abs=1e-9)
    assert row["compute"] > 0.3  # a CPU training step is mostly ops
    assert row["step_ms"] > 0 and row["steps"] == 2 and row["trace"] == trace.name


@pytest.mark.slow
def test_worker_precision_recall_prints_one_json_line():
    env = child_env(OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(REPO / "benchmarks" / "_worker.py"), "precision_recall", "300", "100"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["seconds"] > 0 and result["peak_extra_bytes"] >= 0


def test_kmeans_section_times_both_backends(bench, tmp_path):
    argv = [
        "--only",
        "kmeans",
        "--kmeans-n",
        "300",
        "--kmeans-k",
        "5",
        "--kmeans-sklearn",
        "--out",
        str(tmp_path),
    ]
    assert bench.main(argv) == 0
    (result,) = Path(tmp_path).glob("cpu_*.json")
    rows = json.loads(result.read_text())["sections"]["kmeans"]
    assert [r["what"] for r in rows] == ["PRD k-means, 1 run (torch)", "PRD k-means, 1 run (sklearn)"]
    assert all(r["seconds"] > 0 and r["n"] == 300 and r["k"] == 5 for r in rows)
