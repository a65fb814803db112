"""Every aggregation strategy registers itself here, once.

A strategy module declares its class with ``@register``: the class names its ``Options`` (a
:class:`~fedcare.strategies.base.StrategyOptions` subclass, which *is* the study's
``[strategy]`` section for that name), its :class:`~fedcare.strategies.base.Capabilities` and,
if it has one, its site half. From the registry come the config's discriminated union, the
config reference, ``--help``'s list of names, the compatibility rules (read from the
capabilities, never from a name) and the shared check suite (``tests/contracts``).

Modules are discovered by walking this package (as scikit-learn's ``all_estimators`` walks
its own), so adding a strategy is one new file and its tests, with no list to edit.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TypeVar

from fedcare.core.errors import ConfigError
from fedcare.core.settings import literal_values
from fedcare.strategies.base import SiteAlgorithm, Strategy, StrategyOptions

S = TypeVar("S", bound=type[Strategy])

_REGISTRY: dict[str, type[Strategy]] = {}
_DISCOVERED = False


def register(cls: S) -> S:
    """Class decorator: make ``cls`` available under ``cls.name`` (once)."""
    name = cls.name
    if not name or name == Strategy.name:
        raise TypeError(f"{cls.__qualname__} must set a strategy name")
    declared = cls.Options.model_fields["name"].annotation
    if literal_values(declared) != (name,):
        raise TypeError(f"{cls.__qualname__}.Options.name must be Literal[{name!r}]")
    other = _REGISTRY.get(name)
    if other is not None and other is not cls:
        raise TypeError(f"strategy name {name!r} is registered twice ({other.__qualname__}, "
                        f"{cls.__qualname__})")
    _REGISTRY[name] = cls
    return cls


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    package = importlib.import_module("fedcare.strategies")
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"fedcare.strategies.{info.name}")
    _DISCOVERED = True


def all_strategies() -> dict[str, type[Strategy]]:
    """Every registered strategy class by name, in name order."""
    _discover()
    return dict(sorted(_REGISTRY.items()))


def strategy_class(name: str) -> type[Strategy]:
    strategies = all_strategies()
    if name not in strategies:
        raise ConfigError(f"unknown strategy {name!r}; valid strategies: "
                          f"{', '.join(strategies)}")
    return strategies[name]


def options_types() -> tuple[type[StrategyOptions], ...]:
    """The ``[strategy]`` section of each registered strategy (the config's union)."""
    return tuple(cls.Options for cls in all_strategies().values())


def build_strategy(options: StrategyOptions, *, num_sites: int) -> Strategy:
    """The strategy a validated ``[strategy]`` section asks for."""
    return strategy_class(options.name).from_options(options, num_sites=num_sites)


def site_algorithm(name: str) -> SiteAlgorithm:
    """The site half of strategy ``name`` (a no-op for strategies that have none)."""
    return strategy_class(name).site_half


def describe(name: str) -> str:
    """First line of a strategy's docstring: what ``--help`` shows beside its name."""
    doc = strategy_class(name).__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else name

