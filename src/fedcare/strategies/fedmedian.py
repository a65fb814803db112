"""FedMedian: the coordinate-wise median of the sites' models (Yin et al., ICML 2018).

A robust alternative to FedAvg: each weight of the next model is the median of that weight
over the sites that answered, so a minority of sites sending arbitrary values cannot move it
far ("Byzantine-robust distributed learning: towards optimal statistical rates"). Sites are
not weighted by their size - a site could inflate its weight, and the median's guarantee is
per site.

It needs every site's update: it cannot run under secure aggregation (the hub sees only the
sum) nor with DP-FedAvg (its accounting assumes a noised sum), and says so through its
capabilities. This module is the whole of the strategy: it registers itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
from pydantic import Field

from fedcare.core.errors import ValidationError
from fedcare.core.messages import UpdateKind
from fedcare.core.params import Parameters
from fedcare.strategies.aggregate import UpdateStack
from fedcare.strategies.base import Capabilities, Strategy, StrategyOptions
from fedcare.strategies.registry import register


class FedMedianOptions(StrategyOptions):
    name: Literal["fedmedian"] = Field("fedmedian", description=(
        "FedMedian: coordinate-wise median of the sites' models (Yin et al. 2018)."))


@register
class FedMedian(Strategy):
    """FedMedian: the coordinate-wise median of the sites' models (Yin et al. 2018)."""

    name = "fedmedian"
    Options = FedMedianOptions
    capabilities = Capabilities(aggregates_a_sum=False, site_level_dp=False)

    def aggregate(self, round_: int, current: Parameters, stack: UpdateStack,
                  kind: UpdateKind, aux: Mapping[str, Mapping[str, Parameters]]) -> Parameters:
        if len(stack) == 0:
            raise ValidationError("no updates to aggregate")
        median = np.median(stack.rows, axis=0)
        if kind is UpdateKind.DELTA:
            median = median + current.flatten(stack.dtype)
        return Parameters.unflatten(median.astype(stack.dtype, copy=False), current.spec)
