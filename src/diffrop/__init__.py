"""DiffROP: class-conditional diffusion on long-tailed data with the probabilistic contrastive loss."""

from diffrop.runtime import resolvers as _resolvers

_resolvers.register()  # the configs' resolvers exist wherever diffrop is imported, before any config is composed
