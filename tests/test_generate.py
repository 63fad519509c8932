"""Sharded generation: file format, resume regenerates only missing shards, rank split equals one process,
settings guard, merge and grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffrop.evaluation.generate import generate, merge_shards, save_grid, shard_path
from tests.helpers.config_objects import linear_schedule, sampler_spec

SCHEDULE = linear_schedule(20)
SPEC = sampler_spec("ddim", steps=3, eta=1.0, guidance=0.5, batch_size=3)


class CountingNet(torch.nn.Module):
    """A cheap deterministic 'denoiser' that records how many samples it was asked about."""

    num_classes, in_channels, image_size = 4, 3, 4

    def __init__(self) -> None:
        super().__init__()
        self.samples_seen = 0

    def forward(self, x, t, y, cond):
        self.samples_seen += x.shape[0]
        return 0.5 * x + 0.1 * (y * cond)[:, None, None, None]


def _labels(n: int) -> torch.Tensor:
    return torch.arange(n) % 4


def test_shards_hold_uint8_nhwc_images_labels_and_seeds(tmp_path):
    paths = generate(
        CountingNet(), SCHEDULE, _labels(10), tmp_path, SPEC, seed=7, shard_size=4, progress=False
    )
    assert [p.name for p in paths] == ["shard_00000.npz", "shard_00001.npz", "shard_00002.npz"]
    with np.load(paths[1]) as f:
        assert f["images"].dtype == np.uint8 and f["images"].shape == (4, 4, 4, 3)  # NHWC
        assert f["labels"].tolist() == [0, 1, 2, 3]  # samples 4..7
        assert f["seeds"].tolist() == [11, 12, 13, 14]  # seed + k
    with np.load(paths[2]) as f:
        assert len(f["labels"]) == 2
    assert not list(tmp_path.glob("*.tmp")) and (tmp_path / "manifest.json").is_file()


def test_rerun_regenerates_only_the_missing_shard(tmp_path):
    net = CountingNet()
    paths = generate(net, SCHEDULE, _labels(10), tmp_path, SPEC, shard_size=4, progress=False)
    first_pass = net.samples_seen
    # guidance: each of the 3 steps evaluates 2 x the samples (conditional + unconditional halves)
    assert first_pass == 10 * 3 * 2
    with np.load(paths[1]) as f:
        original = f["images"].copy()
    mtimes = {p: p.stat().st_mtime_ns for p in paths}
    paths[1].unlink()
    net.samples_seen = 0
    generate(net, SCHEDULE, _labels(10), tmp_path, SPEC, shard_size=4, progress=False)
    assert net.samples_seen == 4 * 3 * 2  # only shard 1's four samples
    assert paths[0].stat().st_mtime_ns == mtimes[paths[0]] and paths[2].stat().st_mtime_ns == mtimes[paths[2]]
    with np.load(paths[1]) as f:
        np.testing.assert_array_equal(f["images"], original)  # per-sample seeds: the very same images
    net.samples_seen = 0
    generate(net, SCHEDULE, _labels(10), tmp_path, SPEC, shard_size=4, progress=False)
    assert net.samples_seen == 0  # everything done: nothing to draw


def test_rank_split_and_shard_size_do_not_change_the_set(tmp_path):
    labels = _labels(10)
    one = merge_shards(
        generate(CountingNet(), SCHEDULE, labels, tmp_path / "one", SPEC, shard_size=4, progress=False),
        tmp_path / "one.npz",
    )
    split_dir = tmp_path / "split"
    generate(
        CountingNet(), SCHEDULE, labels, split_dir, SPEC, shard_size=3, rank=1, world_size=2, progress=False
    )
    assert sorted(p.name for p in split_dir.glob("shard_*.npz")) == ["shard_00001.npz", "shard_00003.npz"]
    paths = generate(CountingNet(), SCHEDULE, labels, split_dir, SPEC, shard_size=3, rank=0, world_size=2,
                     progress=False)  # fmt: skip
    two = merge_shards(paths, tmp_path / "two.npz")
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b)
    images, merged_labels, seeds = one
    assert images.shape == (10, 3, 4, 4) and merged_labels.tolist() == labels.tolist()
    assert seeds.tolist() == list(range(10))
    with np.load(tmp_path / "one.npz") as f:
        assert f["images"].shape == (10, 4, 4, 3)


def test_resuming_with_other_settings_is_refused(tmp_path):
    generate(CountingNet(), SCHEDULE, _labels(6), tmp_path, SPEC, shard_size=4, progress=False,
             manifest={"checkpoint": "a.ckpt", "global_step": 10})  # fmt: skip
    with pytest.raises(ValueError, match="global_step") as err:
        generate(CountingNet(), SCHEDULE, _labels(6), tmp_path, SPEC, shard_size=4, progress=False,
                 manifest={"checkpoint": "a.ckpt", "global_step": 20})  # fmt: skip
    assert "delete" in str(err.value)
    with pytest.raises(ValueError, match="guidance_scale"):
        other = sampler_spec("ddim", steps=3, eta=1.0, guidance=2.0, batch_size=3)
        generate(CountingNet(), SCHEDULE, _labels(6), tmp_path, other, shard_size=4, progress=False,
                 manifest={"checkpoint": "a.ckpt", "global_step": 10})  # fmt: skip


def test_grid_has_one_row_per_class(tmp_path):
    from PIL import Image

    images = torch.randint(0, 256, (12, 3, 4, 4), dtype=torch.uint8)
    path = save_grid(images, torch.arange(12) % 3, tmp_path / "grid.png", per_class=5)
    with Image.open(path) as im:  # torchvision pads 2 px around each cell: 5 columns x 3 rows of 4 px
        assert im.size == (2 + 5 * 6, 2 + 3 * 6)


def test_shard_path_names():
    from pathlib import Path

    assert shard_path(Path("s"), 12).name == "shard_00012.npz"


def _generate_as_rank(rank: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    generate(CountingNet(), SCHEDULE, _labels(10), out_dir, SPEC, shard_size=3, rank=rank, world_size=2,
             progress=False)  # fmt: skip


@pytest.mark.slow
def test_two_processes_draw_the_images_one_process_draws(tmp_path):
    """Under torchrun every rank draws its shards at once (src/eval.py): image k comes from seed k whatever the
    world size, so two concurrent processes write exactly the set one process writes."""
    one = merge_shards(
        generate(CountingNet(), SCHEDULE, _labels(10), tmp_path / "one", SPEC, shard_size=4, progress=False),
        tmp_path / "one.npz",
    )
    ctx = torch.multiprocessing.get_context("spawn")
    ranks = [ctx.Process(target=_generate_as_rank, args=(r, str(tmp_path / "two"))) for r in range(2)]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(timeout=120)
    assert [p.exitcode for p in ranks] == [0, 0]
    two = merge_shards(sorted((tmp_path / "two").glob("shard_*.npz")), tmp_path / "two.npz")
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b)
