"""Build a strategy object from the ``[strategy]`` section of a study."""

from __future__ import annotations

from typing import Any

from fedcare.strategies.base import SamplingOptions, Strategy
from fedcare.strategies.fedavg import FedAvg
from fedcare.strategies.fedopt import FedAdagrad, FedAdam, FedOptOptions, FedYogi
from fedcare.strategies.fedprox import FedProx, FedProxOptions
from fedcare.strategies.scaffold import Scaffold, ScaffoldOptions


def build_strategy(section: Any, *, num_sites: int) -> Strategy:
    """``section`` is one of the config's strategy sections (duck-typed: core never imports
    the config module)."""
    sampling = SamplingOptions(section.fraction, section.min_sites, section.min_completed)
    name = section.name
    if name == "fedavg":
        return FedAvg(sampling)
    if name == "fedprox":
        return FedProx(FedProxOptions(section.mu), sampling)
    if name in ("fedadam", "fedyogi", "fedadagrad"):
        opts = FedOptOptions(section.server_lr, section.beta1, section.beta2, section.tau)
        cls = {"fedadam": FedAdam, "fedyogi": FedYogi, "fedadagrad": FedAdagrad}[name]
        return cls(opts, sampling)
    if name == "scaffold":
        return Scaffold(ScaffoldOptions(section.server_lr), sampling, num_sites=num_sites)
    raise ValueError(f"unknown strategy {name!r}")
