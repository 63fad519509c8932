"""SampleGrid draws the run's sampler setting (not a sampler of its own) and refuses, at fit start, one that does
not fit the model's schedule."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torchvision.io import decode_png, read_file

from diffrop.diffusion import samplers
from diffrop.diffusion.samplers.loop import run
from diffrop.training.callbacks import SampleGrid
from tests.helpers.config_objects import linear_schedule, sampler_spec

SCHEDULE = linear_schedule(50)


def test_the_grid_is_the_runs_sampler_from_the_grid_seed(unet, tmp_path):
    spec = sampler_spec("dpmpp2m", steps=4, eta=None, guidance=1.5)
    grid = SampleGrid(str(tmp_path), spec, every_n_steps=5000, per_class=2, seed=3)
    module = SimpleNamespace(ema=unet, schedule=SCHEDULE, device=torch.device("cpu"))
    path = grid.draw(SimpleNamespace(global_step=7, loggers=[]), module)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    x = run(
        samplers.get("dpmpp2m"),
        unet,
        SCHEDULE,
        y,
        (6, 3, 8, 8),
        4,
        None,
        1.5,
        torch.Generator().manual_seed(3),
    )
    # save_image: 2 px of padding around each 8 x 8 image, one row per class
    png = decode_png(read_file(str(path)))
    for k in range(6):
        row, col = divmod(k, 2)
        tile = png[:, 2 + 10 * row : 10 + 10 * row, 2 + 10 * col : 10 + 10 * col]
        expected = ((x[k] + 1) / 2 * 255 + 0.5).clamp(0, 255).to(torch.uint8)  # save_image's rounding
        assert torch.equal(tile, expected)


def test_a_sampler_that_does_not_fit_the_schedule_fails_at_fit_start(tmp_path):
    grid = SampleGrid(
        str(tmp_path), sampler_spec("ddpm", steps=1000, eta=None), every_n_steps=5000, per_class=8
    )
    with pytest.raises(ValueError, match="walks all T=50 steps"):
        grid.on_fit_start(SimpleNamespace(), SimpleNamespace(schedule=SCHEDULE))


def test_the_last_grid_is_drawn_once_when_every_n_steps_divides_max_steps(unet, tmp_path):
    grid = SampleGrid(str(tmp_path), sampler_spec("ddim", steps=2, eta=0.0), every_n_steps=3, per_class=1)
    module = SimpleNamespace(ema=unet, schedule=SCHEDULE, device=torch.device("cpu"))
    drawn = []
    grid.draw = lambda trainer, module: drawn.append(trainer.global_step)
    trainer = SimpleNamespace(global_step=0, loggers=[])
    for step in range(1, 7):  # a 6-step run: grids at 3 and 6, then the end of training at 6
        trainer.global_step = step
        grid.on_train_batch_end(trainer, module, None, None, step - 1)
    grid.on_train_end(trainer, module)
    assert drawn == [3, 6]
    trainer.global_step = 7  # a run that ends between grids still gets its last one
    grid.on_train_end(trainer, module)
    assert drawn == [3, 6, 7]
