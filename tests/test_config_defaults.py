"""One default per setting (docs/design.md, "Where settings live"): a setting that a config node sets has its
default in that YAML only, so the class the node builds takes that argument without a Python default. A Python
default beside the YAML value is a second copy that drifts (PCL's tau0 did: 1 in Python, 0.03 in YAML)."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from diffrop.evaluation.metrics import REGISTRY
from tests.helpers.train_utils import CONFIG_DIR
from tests.test_configs import group_options

ENTRY_CONFIGS = {"train": [], "eval": ["ckpt_path=x.ckpt"], "classify": []}
# nodes that build an object without a `_target_` (build.py / eval.py call these with the node's keys)
BUILT_WITHOUT_TARGET = {
    "sampler": "diffrop.diffusion.sampling.SamplerSpec",
    "eval": "diffrop.evaluation.settings.EvalSettings",
    # each metric's node, built by its Metric's settings class
    **{
        f"eval.metrics.{n}": f"{m.settings.__module__}.{m.settings.__qualname__}" for n, m in REGISTRY.items()
    },
}


def built_nodes(node: DictConfig, path: str = "") -> Iterator[tuple[str, str, DictConfig]]:
    """(path, _target_, node) of every node that builds one of this package's objects."""
    target = node.get("_target_") if "_target_" in node else BUILT_WITHOUT_TARGET.get(path)
    if isinstance(target, str) and target.startswith("diffrop."):
        yield path, target, node
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            yield from built_nodes(node[key], f"{path}.{key}" if path else str(key))


def target_object(target: str):
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


def own_parameters(obj) -> dict[str, inspect.Parameter]:
    """The parameters of a callable this package defines; none for a class that keeps a library's ``__init__``
    (``ResumableCSVLogger`` is Lightning's CSVLogger: those defaults are Lightning's)."""
    init = obj.__init__ if inspect.isclass(obj) else obj
    return dict(inspect.signature(obj).parameters) if init.__module__.startswith("diffrop") else {}


def python_copies(cfg: DictConfig, where: str) -> dict[str, str]:
    """``target.arg`` -> where the YAML sets it, for every argument with a default in both."""
    found = {}
    for path, target, node in built_nodes(cfg):
        params = own_parameters(target_object(target))
        for key in node:
            param = params.get(str(key))
            if param is not None and param.default is not inspect.Parameter.empty:
                found[f"{target}.{key}"] = f"{where}: {path}.{key}"
    return found


def test_python_defaults_never_repeat_a_yaml_setting() -> None:
    copies: dict[str, str] = {}
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for config, base in ENTRY_CONFIGS.items():
            # every option through train.yaml; eval's and classify's own nodes through their defaults
            options = [f"{g}={o}" for g, o in group_options() if not g.startswith("hydra")]
            choices = [None, *(options if config == "train" else [])]
            for choice in choices:
                try:
                    cfg = compose(config, overrides=[*base, *([choice] if choice else [])])
                except Exception:  # a group this entry point does not have
                    continue
                copies |= python_copies(cfg, f"{config} {choice or '(defaults)'}")
    assert not copies, "Python defaults that copy a YAML setting (drop the Python default):\n" + "\n".join(
        f"  {arg}  (set in {where})" for arg, where in sorted(copies.items())
    )


def test_the_check_sees_a_python_copy() -> None:
    """The scan itself: a node whose class has a default for a key it sets is reported."""

    class WithDefault:
        def __init__(self, a: int, b: int = 2) -> None: ...

    import sys
    import types

    module = types.ModuleType("diffrop._probe_defaults")
    module.WithDefault = WithDefault
    WithDefault.__init__.__module__ = module.__name__  # as if the package defined it
    sys.modules[module.__name__] = module
    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.create({"x": {"_target_": "diffrop._probe_defaults.WithDefault", "a": 1, "b": 3}})
        assert python_copies(cfg, "probe") == {"diffrop._probe_defaults.WithDefault.b": "probe: x.b"}
    finally:
        del sys.modules[module.__name__]
