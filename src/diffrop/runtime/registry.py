"""A registry of named records filled from a package: every module of the package that defines the record's
attribute (``SAMPLER``, ``METRIC``) is registered under the record's ``name`` when the package is imported, so a
new sampler or metric is one new module and nothing else to edit; ``register`` adds one defined elsewhere (a
plugin, a test)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any


class Registry(dict):
    """name -> record (a dict, so ``registry[name]``, ``list(registry)`` and ``del registry[name]`` work)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, record: Any) -> Any:
        """Add ``record`` under ``record.name`` (an error if another record has that name; the same one again is a
        no-op)."""
        if self.get(record.name, record) is not record:
            raise ValueError(f"a {self.kind} named {record.name!r} is registered already")
        self[record.name] = record
        return record

    def discover(self, package: str, attribute: str) -> None:
        """Register the ``attribute`` of every module of ``package`` that defines one."""
        for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
            record = getattr(importlib.import_module(f"{package}.{info.name}"), attribute, None)
            if record is not None:
                self.register(record)
