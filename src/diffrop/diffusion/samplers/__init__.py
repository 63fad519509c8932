"""The sampler registry: every module of this package that defines ``SAMPLER`` (a ``loop.Sampler``: a time grid
and an update rule) is registered under its name at import, so a new sampler is one new module here plus
``configs/sampler/<name>.yaml``. ``register`` adds one from elsewhere (a plugin, a test)."""

from __future__ import annotations

from diffrop.diffusion.samplers.loop import Sampler
from diffrop.runtime.registry import Registry

REGISTRY = Registry("sampler")
register = REGISTRY.register


def names() -> tuple[str, ...]:
    """The registered samplers' names, the values ``sampler.name`` takes."""
    return tuple(REGISTRY)


def get(name: str) -> Sampler:
    if name not in REGISTRY:
        raise ValueError(f"sampler.name={name!r} is not one of {list(REGISTRY)}")
    return REGISTRY[name]


REGISTRY.discover(__name__, "SAMPLER")
