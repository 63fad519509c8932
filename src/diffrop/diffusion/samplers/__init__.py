"""The sampler registry: every module of this package that defines ``SAMPLER`` (a ``loop.Sampler``: a time grid
and an update rule) is registered under its name at import, so a new sampler is one new module here plus
``configs/sampler/<name>.yaml``. ``register`` adds one from elsewhere (a plugin, a test)."""

from __future__ import annotations

import importlib
import pkgutil

from diffrop.diffusion.samplers.loop import Sampler

REGISTRY: dict[str, Sampler] = {}


def register(sampler: Sampler) -> Sampler:
    """Add ``sampler`` under ``sampler.name`` (an error if another sampler has that name)."""
    if REGISTRY.get(sampler.name, sampler) is not sampler:
        raise ValueError(f"a sampler named {sampler.name!r} is registered already")
    REGISTRY[sampler.name] = sampler
    return sampler


def names() -> tuple[str, ...]:
    """The registered samplers' names, the values ``sampler.name`` takes."""
    return tuple(REGISTRY)


def get(name: str) -> Sampler:
    if name not in REGISTRY:
        raise ValueError(f"sampler.name={name!r} is not one of {list(REGISTRY)}")
    return REGISTRY[name]


for _module in pkgutil.iter_modules(__path__):
    _sampler = getattr(importlib.import_module(f"{__name__}.{_module.name}"), "SAMPLER", None)
    if _sampler is not None:
        register(_sampler)
