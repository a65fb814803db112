"""FedProx (Li et al., MLSys 2020): FedAvg whose sites add mu/2 * ||w - w_global||^2.

The server side is FedAvg; the only change is the proximal coefficient sent in each task,
which the learner applies to every gradient. It limits client drift on heterogeneous sites.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedcare.core.errors import ConfigError
from fedcare.core.messages import TrainConfig
from fedcare.strategies.base import SamplingOptions, with_mu
from fedcare.strategies.fedavg import FedAvg


@dataclass(frozen=True)
class FedProxOptions:
    mu: float = 0.01

    def __post_init__(self) -> None:
        if not self.mu > 0:
            raise ConfigError("strategy.mu must be > 0 for FedProx (mu = 0 is FedAvg)")


class FedProx(FedAvg):
    name = "fedprox"

    def __init__(self, options: FedProxOptions | None = None,
                 sampling: SamplingOptions | None = None) -> None:
        super().__init__(sampling)
        self.options = options or FedProxOptions()

    def train_config(self, base: TrainConfig) -> TrainConfig:
        return with_mu(base, self.options.mu)
