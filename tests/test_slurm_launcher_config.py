"""The SLURM launcher's resource request as composed from the configs (no cluster needed): a CPU trainer asks for
no GPU, a GPU trainer for one per device."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from submitit.slurm.slurm import _make_sbatch_string

from diffrop.runtime import resolvers
from tests.helpers.train_utils import REPO


def launcher(*overrides: str) -> dict:
    resolvers.register()  # as src/train.py does at import
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


@pytest.mark.parametrize(
    ("overrides", "tasks", "gpus"),
    [
        (["trainer=cpu"], 1, None),
        (["trainer=ddp_cpu"], 2, None),
        (["trainer=ddp_cpu", "trainer.devices=3"], 3, None),
        (["trainer=gpu"], 1, 1),
        (["trainer=ddp", "trainer.devices=4"], 4, 4),
    ],
)
def test_gpus_per_node_follows_the_accelerator(overrides, tasks, gpus):
    params = launcher(*overrides)
    assert params["tasks_per_node"] == tasks
    assert params["gpus_per_node"] == gpus


def test_cpu_trainer_sbatch_script_requests_no_gpu(tmp_path):
    params = launcher("trainer=cpu")
    script = _make_sbatch_string(
        command="true", folder=tmp_path, gpus_per_node=params["gpus_per_node"],
        ntasks_per_node=params["tasks_per_node"], cpus_per_task=params["cpus_per_task"],
    )  # fmt: skip
    assert "--gpus-per-node" not in script and "gres" not in script
    assert "#SBATCH --ntasks-per-node=1" in script
    gpu_script = _make_sbatch_string(
        command="true", folder=tmp_path, gpus_per_node=launcher("trainer=gpu")["gpus_per_node"]
    )
    assert "#SBATCH --gpus-per-node=1" in gpu_script


def test_an_explicit_value_still_wins():
    assert launcher("trainer=ddp", "hydra.launcher.gpus_per_node=null")["gpus_per_node"] is None
    assert launcher("trainer=cpu", "hydra.launcher.gpus_per_node=2")["gpus_per_node"] == 2
