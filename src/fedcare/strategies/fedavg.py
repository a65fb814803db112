"""FedAvg: example-weighted average of site models (McMahan et al., AISTATS 2017)."""

from __future__ import annotations

from collections.abc import Mapping

from fedcare.core.messages import UpdateKind
from fedcare.core.params import Parameters
from fedcare.strategies.aggregate import UpdateStack
from fedcare.strategies.base import Strategy, averaged_model


class FedAvg(Strategy):
    name = "fedavg"

    def aggregate(self, round_: int, current: Parameters, stack: UpdateStack,
                  kind: UpdateKind, aux: Mapping[str, Mapping[str, Parameters]]) -> Parameters:
        return Parameters.unflatten(averaged_model(current, stack, kind), current.spec)
