"""FedAvg: example-weighted average of site models (McMahan et al., AISTATS 2017)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal

from pydantic import Field

from fedcare.core.messages import UpdateKind
from fedcare.core.params import Parameters
from fedcare.strategies.aggregate import UpdateStack
from fedcare.strategies.base import Strategy, StrategyOptions, averaged_model
from fedcare.strategies.registry import register


class FedAvgOptions(StrategyOptions):
    name: Literal["fedavg"] = Field("fedavg", description="FedAvg (McMahan et al. 2017).")


@register
class FedAvg(Strategy):
    """FedAvg: the example-weighted average of the sites' models (McMahan et al. 2017)."""

    name = "fedavg"
    Options: ClassVar[type[StrategyOptions]] = FedAvgOptions

    def aggregate(self, round_: int, current: Parameters, stack: UpdateStack,
                  kind: UpdateKind, aux: Mapping[str, Mapping[str, Parameters]]) -> Parameters:
        return Parameters.unflatten(averaged_model(current, stack, kind), current.spec)
