"""Every data source registers itself here, once (as strategies do in
:mod:`fedcare.strategies.registry` and models in :mod:`fedcare.learners.options`).

From the registry come the study config's ``[data]`` union (discriminated by ``source``), the
config reference, ``--help``'s list of sources, the compatibility rules (read from each
source's :class:`~fedcare.data.sources.base.DataCapabilities`) and the contract suite
(``tests/contracts/test_data_sources.py``). Modules are discovered by walking this package, so
adding a source is one new file and its tests.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TypeVar

from fedcare.core.errors import ConfigError
from fedcare.core.settings import literal_values
from fedcare.data.sources.base import DataOptions

D = TypeVar("D", bound=DataOptions)

_REGISTRY: dict[str, type[DataOptions]] = {}
_DISCOVERED = False


def register_source(cls: type[D]) -> type[D]:
    """Class decorator: make the options class ``cls`` the ``[data]`` section of the source
    its ``source`` field names (once)."""
    names = literal_values(cls.model_fields["source"].annotation)
    if len(names) != 1 or not cls.source_summary():
        raise TypeError(f"{cls.__qualname__} must narrow source to one Literal with a "
                        "description (the source's summary)")
    if cls.build is DataOptions.build:
        raise TypeError(f"{cls.__qualname__} must say how it builds its sites (build)")
    other = _REGISTRY.get(names[0])
    if other is not None and other is not cls:
        raise TypeError(f"data source {names[0]!r} is registered twice ({other.__qualname__}, "
                        f"{cls.__qualname__})")
    _REGISTRY[names[0]] = cls
    return cls


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    package = importlib.import_module("fedcare.data.sources")
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"fedcare.data.sources.{info.name}")
    _DISCOVERED = True


def all_sources() -> dict[str, type[DataOptions]]:
    """Every registered source's options class by name, in name order."""
    _discover()
    return dict(sorted(_REGISTRY.items()))


def source_class(name: str) -> type[DataOptions]:
    sources = all_sources()
    if name not in sources:
        raise ConfigError(f"unknown data source {name!r}; valid sources: {', '.join(sources)}")
    return sources[name]


def sources_that(capability: str) -> list[str]:
    """The names of the sources whose capability ``capability`` is true (for messages)."""
    return [n for n, cls in all_sources().items() if getattr(cls.capabilities, capability)]
