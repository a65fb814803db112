"""A strategy: a small class with a few hooks. It never does I/O.

The round engine asks it which sites to train (``sample``), how they should train
(``train_config``, ``task_aux``), what each update must carry (``expected_aux``) and how to
turn the stacked updates into the next global model (``aggregate``). Strategy state (server
optimizer moments, control variates) is exposed as named arrays for checkpoints.

Some algorithms also have a site half (SCAFFOLD's local control variate). That half is a
:class:`SiteAlgorithm`, kept in the strategy's module so both halves of one paper live together;
the site executor looks it up by the strategy name carried in the task.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from fedcare.core.errors import ConfigError
from fedcare.core.learning import FitResult
from fedcare.core.messages import TrainConfig, UpdateKind
from fedcare.core.params import Parameters, ParamSpec
from fedcare.strategies.aggregate import UpdateStack
from fedcare.strategies.sampling import sample_sites


@dataclass(frozen=True)
class SamplingOptions:
    """Site sampling shared by all strategies."""

    fraction: float = 1.0
    min_sites: int = 1
    min_completed: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ConfigError("strategy.fraction must be in (0, 1]")
        if self.min_sites < 1 or self.min_completed < 1:
            raise ConfigError("strategy.min_sites and strategy.min_completed must be >= 1")


class Strategy(ABC):
    """Base class; subclasses override :meth:`aggregate` and, when needed, the other hooks."""

    name: str = "base"

    def __init__(self, sampling: SamplingOptions | None = None) -> None:
        self.sampling = sampling or SamplingOptions()

    def initialize(self, parameters: Parameters) -> None:  # noqa: B027 - optional hook
        """Called once with the initial model before round 1 (allocate state here)."""

    def sample(self, sites: Sequence[str], rng: np.random.Generator) -> list[str]:
        s = self.sampling
        return sample_sites(sites, s.fraction, s.min_sites, rng)

    def train_config(self, base: TrainConfig) -> TrainConfig:
        return base

    def task_aux(self) -> dict[str, Parameters]:
        return {}

    def expected_aux(self, spec: ParamSpec) -> dict[str, ParamSpec]:
        return {}

    @abstractmethod
    def aggregate(self, round_: int, current: Parameters, stack: UpdateStack,
                  kind: UpdateKind, aux: Mapping[str, Mapping[str, Parameters]]) -> Parameters:
        """Next global model from the stacked updates of the sites that completed."""

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        if state:
            raise ConfigError(f"strategy {self.name} has no state but a checkpoint carries some")


def averaged_model(current: Parameters, stack: UpdateStack, kind: UpdateKind, *,
                   uniform: bool = False) -> np.ndarray:
    """Flat average of the updates expressed as full weights (adds the global for deltas)."""
    avg = stack.average(uniform=uniform)
    if kind is UpdateKind.DELTA:
        avg += current.flatten(stack.dtype)
    return avg


class SiteAlgorithm:
    """Site half of a strategy. The default does nothing (FedAvg, FedProx, FedOpt)."""

    def correction(self, task_aux: Mapping[str, Parameters],
                   site_state: Mapping[str, np.ndarray]) -> Parameters | None:
        return None

    def after_fit(self, task_params: Parameters, task_aux: Mapping[str, Parameters],
                  result: FitResult, train: TrainConfig,
                  site_state: Mapping[str, np.ndarray]
                  ) -> tuple[dict[str, Parameters], dict[str, np.ndarray]]:
        """Return (aux arrays for the update, new site state)."""
        return {}, dict(site_state)


def with_mu(base: TrainConfig, mu: float) -> TrainConfig:
    return replace(base, proximal_mu=mu)
