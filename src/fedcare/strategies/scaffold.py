"""SCAFFOLD: stochastic controlled averaging (Karimireddy et al., ICML 2020).

Each site keeps a control variate ``c_i`` and the server a global ``c``. Local SGD steps use
the corrected gradient ``g + c - c_i``, which removes client drift on non-IID sites. After K
local steps with learning rate eta_l, a site updates (option II of the paper)::

    c_i+ = c_i - c + (x - y_i) / (K * eta_l)

and returns its model ``y_i`` and ``delta_c_i = c_i+ - c_i``. The server sets
``x <- x + eta_g * mean(y_i - x)`` and ``c <- c + |S|/N * mean(delta_c_i)`` (uniform means
over the sampled set S, as in the paper). Option II assumes plain SGD locally: use momentum 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
from pydantic import Field

from fedcare.core.errors import ConfigError, ValidationError
from fedcare.core.learning import FitResult
from fedcare.core.limits import MAX_LR
from fedcare.core.messages import TrainConfig, UpdateKind
from fedcare.core.params import Parameters, ParamSpec
from fedcare.strategies.aggregate import UpdateStack
from fedcare.strategies.base import (
    Capabilities,
    SamplingOptions,
    SiteAlgorithm,
    Strategy,
    StrategyOptions,
    averaged_model,
    own_options,
)
from fedcare.strategies.registry import register

CONTROL = "c"        # the server control variate, sent with each task
DELTA_CONTROL = "dc"  # a site's change of its own control variate, returned with its update


class ScaffoldOptions(StrategyOptions):
    name: Literal["scaffold"] = Field("scaffold",
                                      description="SCAFFOLD (Karimireddy et al. 2020).")
    server_lr: float = Field(1.0, gt=0, le=MAX_LR,
                             description="Server learning rate.")


@register
class Scaffold(Strategy):
    """SCAFFOLD: control variates remove client drift on non-IID sites (Karimireddy et al. 2020)."""

    name = "scaffold"
    Options = ScaffoldOptions
    # Each site's control-variate change travels beside its update, outside the secure sum
    # and without DP noise: SCAFFOLD works with neither.
    capabilities = Capabilities(aggregates_a_sum=False, site_level_dp=False, server_state=True)

    def __init__(self, options: ScaffoldOptions | None = None,
                 sampling: SamplingOptions | None = None, num_sites: int = 1) -> None:
        super().__init__(sampling)
        self.options = options or ScaffoldOptions()
        self.num_sites = num_sites
        self._c: Parameters | None = None

    @classmethod
    def from_options(cls, options: StrategyOptions, *, num_sites: int) -> Strategy:
        own = own_options(options, ScaffoldOptions)
        return cls(own, own.sampling(), num_sites=num_sites)

    def initialize(self, parameters: Parameters) -> None:
        self._c = Parameters({k: np.zeros_like(v) for k, v in parameters.items()})

    def train_config(self, base: TrainConfig) -> TrainConfig:
        if base.momentum != 0 or base.optimizer != "sgd":
            raise ConfigError("SCAFFOLD needs plain local SGD: set train.optimizer = 'sgd' "
                              "and train.momentum = 0")
        return base

    def task_aux(self) -> dict[str, Parameters]:
        assert self._c is not None, "initialize() first"
        return {CONTROL: self._c}

    def expected_aux(self, spec: ParamSpec) -> dict[str, ParamSpec]:
        return {DELTA_CONTROL: spec}

    def aggregate(self, round_: int, current: Parameters, stack: UpdateStack,
                  kind: UpdateKind, aux: Mapping[str, Mapping[str, Parameters]]) -> Parameters:
        assert self._c is not None, "initialize() first"
        x = current.flatten(stack.dtype)
        y_mean = averaged_model(current, stack, kind, uniform=True)
        x_new = x + self.options.server_lr * (y_mean - x)
        sites = stack.sites
        missing = [s for s in sites if DELTA_CONTROL not in aux.get(s, {})]
        if missing:
            raise ValidationError(f"SCAFFOLD updates lack control deltas from {missing}")
        dc = np.mean([aux[s][DELTA_CONTROL].flatten(stack.dtype) for s in sites], axis=0)
        c_now = Parameters({k: self._c[k] for k in current})  # model order, whatever c's order
        c_new = c_now.flatten(stack.dtype) + (len(sites) / self.num_sites) * dc
        self._c = Parameters.unflatten(c_new, current.spec)
        return Parameters.unflatten(x_new, current.spec)

    def state(self) -> dict[str, np.ndarray]:
        return {} if self._c is None else {f"c/{k}": v for k, v in self._c.items()}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore ``c`` (checkpoint files sort names; the model's order is restored here)."""
        loaded = {k[2:]: np.array(v) for k, v in state.items() if k.startswith("c/")}
        order = list(self._c) if self._c is not None else sorted(loaded)
        if set(order) != set(loaded):
            raise ValidationError("SCAFFOLD checkpoint state does not match the model's layout")
        self._c = Parameters({k: loaded[k] for k in order})


class ScaffoldSite(SiteAlgorithm):
    """The site half: applies ``c - c_i`` to gradients and updates ``c_i`` after training."""

    def correction(self, task_aux: Mapping[str, Parameters],
                   site_state: Mapping[str, np.ndarray]) -> Parameters | None:
        c = task_aux.get(CONTROL)
        if c is None:
            raise ValidationError("SCAFFOLD task lacks the server control variate")
        return Parameters({k: v - site_state.get(f"c_i/{k}", 0.0) for k, v in c.items()})

    def after_fit(self, task_params: Parameters, task_aux: Mapping[str, Parameters],
                  result: FitResult, train: TrainConfig,
                  site_state: Mapping[str, np.ndarray]
                  ) -> tuple[dict[str, Parameters], dict[str, np.ndarray]]:
        c = task_aux[CONTROL]
        k_lr = max(result.num_steps, 1) * train.lr
        new_state: dict[str, np.ndarray] = {}
        dc: dict[str, np.ndarray] = {}
        for name, x in task_params.items():
            c_i = site_state.get(f"c_i/{name}", np.zeros_like(x))
            c_i_new = (c_i - c[name] + (x - result.parameters[name]) / k_lr).astype(x.dtype)
            new_state[f"c_i/{name}"] = c_i_new
            dc[name] = c_i_new - c_i
        return {DELTA_CONTROL: Parameters(dc)}, new_state


Scaffold.site_half = ScaffoldSite()
