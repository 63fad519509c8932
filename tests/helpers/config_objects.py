"""Objects as the configs build them, for tests: a setting's default lives in its YAML only (docs/design.md,
"Where settings live"), so a test that wants "the default PCL" or "the paper's schedule" reads configs/ too."""

from __future__ import annotations

import functools
import importlib
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.helpers.train_utils import CONFIG_DIR


def from_yaml(name: str, node: str | None = None, **kwargs: Any) -> Any:
    """What configs/<name>.yaml (its ``node`` sub-node) builds, ``kwargs`` replacing or filling settings (an
    interpolated one, such as PCL's ``tau: ${tau}``, must be given). For files without a defaults list."""
    cfg = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    raw = OmegaConf.to_container(cfg[node] if node else cfg, resolve=False)
    settings = OmegaConf.create({k: v for k, v in raw.items() if k not in kwargs})
    return _call(OmegaConf.to_container(settings, resolve=True), kwargs)


def from_group(group: str, option: str, **kwargs: Any) -> Any:
    """What ``<group>=<option>`` builds as configs/train.yaml composes it (defaults lists and interpolations
    resolved), ``kwargs`` replacing settings."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"{group}={option}"])
    return _call(OmegaConf.to_container(cfg[group], resolve=True), kwargs)


def _call(settings: dict[str, Any], kwargs: dict[str, Any]) -> Any:
    """``settings["_target_"]`` called directly (its errors arrive unwrapped, as tests match them)."""
    module, _, name = settings.pop("_target_").rpartition(".")
    return getattr(importlib.import_module(module), name)(**{**settings, **kwargs})


def pcl(phi: str, tau, **kwargs: Any):
    """configs/loss/term/pcl.yaml's PCL with this phi and tau schedule."""
    return from_yaml("loss/term/pcl", phi=phi, tau=tau, **kwargs)


def eps_mse(**kwargs: Any):
    return from_yaml("loss/term/ddpm", **kwargs)


def cbdm(**kwargs: Any):
    return from_yaml("loss/term/cbdm", **kwargs)


def linear_schedule(num_steps: int = 1000):
    """configs/diffusion/linear_1000.yaml's betas (Ho et al. 2020) over ``num_steps``."""
    return from_yaml("diffusion/linear_1000", num_steps=num_steps)


_SPEC_POSITIONAL = ("steps", "eta", "guidance")


@functools.cache
def _sampler_group(option: str) -> dict[str, Any]:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return OmegaConf.to_container(compose("train", overrides=[f"sampler={option}"]).sampler, resolve=True)


def sampler_spec(name: str = "ddim", *args: Any, **kwargs: Any):
    """The SamplerSpec of configs/sampler/<name>.yaml (of ddim.yaml's shared keys for a sampler without a file),
    with positional steps, eta, guidance and keyword settings on top."""
    from diffrop.diffusion.sampling import SamplerSpec

    option = name if (CONFIG_DIR / "sampler" / f"{name}.yaml").is_file() else "ddim"
    positional = dict(zip(_SPEC_POSITIONAL[: len(args)], args, strict=True))
    return SamplerSpec(**{**_sampler_group(option), "name": name, **positional, **kwargs})
