"""build.eval_sampler: a checkpoint's stored sampler recipe, the eval group, and the command's overrides."""

from diffrop.build import eval_sampler

GROUP = {"name": "ddim", "steps": 100, "eta": 0.0, "guidance": 0.0, "labels": "balanced", "batch_size": 256,
         "precision": "fp32", "compile": False}  # fmt: skip
PAPER_DDPM = {"name": "ddpm", "steps": 1000, "eta": None, "guidance": 0.8, "labels": "balanced", "batch_size": 64,
              "precision": "fp32", "compile": False}  # fmt: skip


def test_the_stored_recipe_wins_over_the_eval_default():
    got = eval_sampler(GROUP, PAPER_DDPM, ["ckpt_path=x.ckpt"])
    assert got == GROUP | {"name": "ddpm", "steps": 1000, "eta": None, "guidance": 0.8}
    assert got["batch_size"] == 256  # how to run it is eval's, not the training run's


def test_a_sampler_key_on_the_command_line_wins_over_the_recipe():
    group = GROUP | {"guidance": 0.0, "batch_size": 32}  # what Hydra composed with those overrides
    got = eval_sampler(group, PAPER_DDPM, ["sampler.guidance=0", "sampler.batch_size=32"])
    assert (got["name"], got["steps"], got["guidance"], got["batch_size"]) == ("ddpm", 1000, 0.0, 32)


def test_choosing_a_sampler_group_or_a_checkpoint_without_recipe_uses_the_group():
    assert eval_sampler(GROUP, PAPER_DDPM, ["sampler=ddim", "ckpt_path=x"]) == GROUP
    assert eval_sampler(GROUP, None, []) == GROUP
