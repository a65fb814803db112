"""FedProx (Li et al., MLSys 2020): FedAvg whose sites add mu/2 * ||w - w_global||^2.

The server side is FedAvg; the only change is the proximal coefficient sent in each task,
which the learner applies to every gradient. It limits client drift on heterogeneous sites.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedcare.core.limits import MAX_PROXIMAL_MU
from fedcare.core.messages import TrainConfig
from fedcare.strategies.base import (
    SamplingOptions,
    Strategy,
    StrategyOptions,
    own_options,
    with_mu,
)
from fedcare.strategies.fedavg import FedAvg
from fedcare.strategies.registry import register


class FedProxOptions(StrategyOptions):
    name: Literal["fedprox"] = Field("fedprox", description="FedProx (Li et al. 2020).")
    mu: float = Field(0.01, gt=0, le=MAX_PROXIMAL_MU, description=(
        "Proximal coefficient mu (> 0; mu = 0 is FedAvg)."))


@register
class FedProx(FedAvg):
    """FedProx: FedAvg whose sites add a proximal term mu/2 ||w - w_global||^2 (Li et al. 2020)."""

    name = "fedprox"
    Options = FedProxOptions

    def __init__(self, options: FedProxOptions | None = None,
                 sampling: SamplingOptions | None = None) -> None:
        super().__init__(sampling)
        self.options = options or FedProxOptions()

    @classmethod
    def from_options(cls, options: StrategyOptions, *, num_sites: int) -> Strategy:
        own = own_options(options, FedProxOptions)
        return cls(own, own.sampling())

    def train_config(self, base: TrainConfig) -> TrainConfig:
        return with_mu(base, self.options.mu)
