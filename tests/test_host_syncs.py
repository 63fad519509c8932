"""No host syncs in the training step: between logging steps, nothing reads a tensor's value on the host (on a
GPU each such read waits for every queued kernel, and the GPU idles while the host refills the queue)."""

from __future__ import annotations

import json

import pytest

from tests.helpers.train_utils import train_in_process

QUIET_STEPS = {
    "2",
    "3",
    "5",
    "6",
    "7",
}  # log / progress every 4 steps, 9 steps: reads allowed after 0, 4, 8, 9


@pytest.mark.slow  # two 9-step runs through src/train.py, ~10 s each
@pytest.mark.parametrize(
    ("bar", "loss", "on_device"), [("rich", "pcl_exp", "false"), ("log", "cbdm_pcl_exp", "true")]
)
def test_no_tensor_is_read_by_the_host_between_logging_steps(tmp_path, bar, loss, on_device):
    """Forward, loss terms (PCL, CBDM), backward, clipping, Adam, EMA, NaN guard (``skip``: the CPU-only
    per-step check of ``stop`` is excluded), Lightning's logging and the progress bar. The loss reaches the bar
    only when it draws (every 4 steps here): logged with ``prog_bar=True`` it was read after every step."""
    reads = tmp_path / "reads.json"
    overrides = [
        "data=digits_lt", "model=tiny", "trainer=cpu", "logger=csv", "data.batch_size=8", "optim.warmup_steps=0",
        f"loss={loss}", f"data.on_device={on_device}", "optim.nonfinite=skip", "trainer.max_steps=9",
        "trainer.log_every_n_steps=4", "callbacks.sample_grid.every_n_steps=0", "sampler.steps=2",
        f"callbacks.progress_bar.kind={bar}", "callbacks.progress_bar.refresh_rate=4",
        "callbacks.progress_bar.every_n_steps=4", "callbacks.progress_bar.every_n_seconds=0",
        "~callbacks.model_summary",
        "+callbacks.sync_probe._target_=tests.helpers.sync_probe.SyncProbe", f"+callbacks.sync_probe.out={reads}",
    ]  # fmt: skip
    train_in_process(overrides, tmp_path / "run")
    by_step = json.loads(reads.read_text())
    assert {step: by_step[step] for step in QUIET_STEPS & by_step.keys()} == {}
    assert {"1", "4", "8"} <= by_step.keys()  # the probe sees the reads of logging steps
    assert any("training/progress_bars.py" in r for r in by_step["4"])  # ... and the bar's loss when it draws
