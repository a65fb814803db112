"""Aggregation strategies, one module each; the numeric core is in ``aggregate``."""

from __future__ import annotations

from fedcare.strategies.aggregate import UpdateStack, weighted_average_rows
from fedcare.strategies.base import SamplingOptions, SiteAlgorithm, Strategy
from fedcare.strategies.fedavg import FedAvg
from fedcare.strategies.fedopt import FedAdagrad, FedAdam, FedOptOptions, FedYogi
from fedcare.strategies.fedprox import FedProx, FedProxOptions
from fedcare.strategies.scaffold import Scaffold, ScaffoldOptions, ScaffoldSite

STRATEGY_NAMES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "scaffold")

_SITE_ALGORITHMS: dict[str, SiteAlgorithm] = {"scaffold": ScaffoldSite()}


def site_algorithm(strategy_name: str) -> SiteAlgorithm:
    """The site half of a strategy (a no-op for strategies that have none)."""
    return _SITE_ALGORITHMS.get(strategy_name, SiteAlgorithm())


__all__ = [
    "STRATEGY_NAMES", "FedAdagrad", "FedAdam", "FedAvg", "FedOptOptions", "FedProx",
    "FedProxOptions", "FedYogi", "SamplingOptions", "Scaffold", "ScaffoldOptions",
    "SiteAlgorithm", "Strategy", "UpdateStack", "site_algorithm", "weighted_average_rows",
]
