"""Aggregation strategies, one module each, registered once (:mod:`.registry`); the numeric
core is in ``aggregate``."""

from __future__ import annotations

from fedcare.strategies.aggregate import UpdateStack, weighted_average_rows
from fedcare.strategies.base import (
    Capabilities,
    SamplingOptions,
    SiteAlgorithm,
    Strategy,
    StrategyOptions,
)
from fedcare.strategies.fedavg import FedAvg
from fedcare.strategies.fedopt import FedAdagrad, FedAdam, FedOptOptions, FedYogi
from fedcare.strategies.fedprox import FedProx, FedProxOptions
from fedcare.strategies.registry import (
    all_strategies,
    build_strategy,
    register,
    site_algorithm,
    strategy_class,
)
from fedcare.strategies.scaffold import Scaffold, ScaffoldOptions, ScaffoldSite

__all__ = [
    "Capabilities", "FedAdagrad", "FedAdam", "FedAvg", "FedOptOptions", "FedProx",
    "FedProxOptions", "FedYogi", "SamplingOptions", "Scaffold", "ScaffoldOptions",
    "ScaffoldSite", "SiteAlgorithm", "Strategy", "StrategyOptions", "UpdateStack",
    "all_strategies", "build_strategy", "register", "site_algorithm", "strategy_class",
    "weighted_average_rows",
]
