"""A strategy: a small class with a few hooks. It never does I/O.

The round engine asks it which sites to train (``sample``), how they should train
(``train_config``, ``task_aux``), what each update must carry (``expected_aux``) and how to
turn the stacked updates into the next global model (``aggregate``). Strategy state (server
optimizer moments, control variates) is exposed as named arrays for checkpoints.

Some algorithms also have a site half (SCAFFOLD's local control variate). That half is a
:class:`SiteAlgorithm`, kept in the strategy's module so both halves of one paper live together;
a site takes it from the strategy of the study it approved, never from a task.

A strategy declares itself once (:mod:`fedcare.strategies.registry`): its ``Options`` (the
study's ``[strategy]`` section for its name), its :class:`Capabilities` and its site half.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, TypeVar

import numpy as np
from pydantic import Field

from fedcare.core.errors import ConfigError
from fedcare.core.learning import FitResult
from fedcare.core.messages import TrainConfig, UpdateKind
from fedcare.core.params import Parameters, ParamSpec
from fedcare.core.settings import Section
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


class StrategyOptions(Section):
    """The ``[strategy]`` section every strategy shares; a strategy's ``Options`` subclass
    narrows ``name`` to ``Literal["its-name"]`` and adds its own keys."""

    name: str
    fraction: float = Field(1.0, gt=0, le=1, description="Share of sites sampled per round.")
    min_sites: int = Field(1, ge=1, le=10_000,
                           description="Minimum sites sampled per round.")
    min_completed: int = Field(1, ge=1, le=10_000, description=(
        "Minimum sites that must answer for a round to count."))

    def sampling(self) -> SamplingOptions:
        return SamplingOptions(self.fraction, self.min_sites, self.min_completed)


OptionsT = TypeVar("OptionsT", bound=StrategyOptions)


def own_options(options: StrategyOptions, kind: type[OptionsT]) -> OptionsT:
    """``options`` as the strategy's own section type (the registry routes by name, so a
    mismatch is a programming error, refused rather than half-used)."""
    if not isinstance(options, kind):
        raise ConfigError(f"strategy {options.name!r} got {type(options).__name__}, "
                          f"expected {kind.__name__}")
    return options


@dataclass(frozen=True)
class Capabilities:
    """What a strategy works with. The study's compatibility rules and the round engine read
    these (as scikit-learn's meta-estimators read estimator tags), never a strategy's name.

    ``aggregates_a_sum``: the next model depends on the sites' updates only through their
    weighted sum, so the strategy works when secure aggregation shows the hub nothing but that
    sum (a median or Krum needs the individual updates; SCAFFOLD needs each site's control
    variate). ``site_level_dp``: it works with DP-FedAvg, whose sites send clipped, noised
    differences weighted uniformly, and nothing else un-noised. ``server_state``: it keeps
    state between rounds, checkpointed through :meth:`Strategy.state`.
    """

    aggregates_a_sum: bool = True
    site_level_dp: bool = True
    server_state: bool = False


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


class Strategy(ABC):
    """Base class; subclasses override :meth:`aggregate` and, when needed, the other hooks,
    and declare ``name``, ``Options``, ``capabilities`` and (if any) ``site_half``."""

    name: ClassVar[str] = "base"
    #: The study's ``[strategy]`` section for this strategy.
    Options: ClassVar[type[StrategyOptions]] = StrategyOptions
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: The site half (what a site runs besides training); a no-op by default.
    site_half: ClassVar[SiteAlgorithm] = SiteAlgorithm()

    def __init__(self, sampling: SamplingOptions | None = None) -> None:
        self.sampling = sampling or SamplingOptions()

    @classmethod
    def from_options(cls, options: StrategyOptions, *, num_sites: int) -> Strategy:
        """Build from the validated ``[strategy]`` section (``num_sites``: the study's)."""
        return cls(options.sampling())

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


def with_mu(base: TrainConfig, mu: float) -> TrainConfig:
    return replace(base, proximal_mu=mu)
