"""Adaptive server optimizers: FedAdagrad, FedAdam, FedYogi (Reddi et al., ICLR 2021).

Sites train as in FedAvg; the server treats the averaged change ``delta = avg(x_i) - x`` as
a pseudo-gradient and applies an adaptive step (Algorithm 2 of the paper)::

    m   = beta1 * m + (1 - beta1) * delta
    v   = v + delta^2                                   (Adagrad)
    v   = beta2 * v + (1 - beta2) * delta^2             (Adam)
    v   = v - (1 - beta2) * delta^2 * sign(v - delta^2) (Yogi)
    x   = x + eta * m / (sqrt(v) + tau)

As in the paper there is no bias correction, and ``v`` starts at ``tau^2``. The update rules
are pure functions over flat numpy vectors so they can be checked against the formula.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
from pydantic import Field

from fedcare.core.errors import ConfigError
from fedcare.core.limits import MAX_LR
from fedcare.core.messages import UpdateKind
from fedcare.core.params import Parameters
from fedcare.strategies.aggregate import UpdateStack
from fedcare.strategies.base import (
    Capabilities,
    SamplingOptions,
    Strategy,
    StrategyOptions,
    averaged_model,
    own_options,
)
from fedcare.strategies.registry import register


class FedOptOptions(StrategyOptions):
    """Options of the three adaptive server optimizers (one ``name`` each below)."""

    name: Literal["fedadam", "fedyogi", "fedadagrad"] = Field(
        "fedadam", description="Adaptive server optimizers (Reddi et al. 2021).")
    server_lr: float = Field(0.01, gt=0, le=MAX_LR,
                             description="Server learning rate.")
    beta1: float = Field(0.9, ge=0, lt=1, description="First-moment decay beta1.")
    beta2: float = Field(0.99, ge=0, lt=1, description="Second-moment decay beta2.")
    tau: float = Field(1e-3, gt=0, le=1e6,
                       description="Adaptivity tau (also the initial sqrt(v)).")


class FedAdamOptions(FedOptOptions):
    name: Literal["fedadam"] = Field("fedadam", description="FedAdam (Reddi et al. 2021).")


class FedYogiOptions(FedOptOptions):
    name: Literal["fedyogi"] = Field("fedyogi", description="FedYogi (Reddi et al. 2021).")


class FedAdagradOptions(FedOptOptions):
    name: Literal["fedadagrad"] = Field("fedadagrad",
                                        description="FedAdagrad (Reddi et al. 2021).")


def adagrad_v(v: np.ndarray, delta: np.ndarray, beta2: float) -> np.ndarray:
    return v + delta * delta


def adam_v(v: np.ndarray, delta: np.ndarray, beta2: float) -> np.ndarray:
    return beta2 * v + (1 - beta2) * delta * delta


def yogi_v(v: np.ndarray, delta: np.ndarray, beta2: float) -> np.ndarray:
    d2 = delta * delta
    return v - (1 - beta2) * d2 * np.sign(v - d2)


def server_step(x: np.ndarray, m: np.ndarray, v: np.ndarray, delta: np.ndarray,
                opts: FedOptOptions, v_rule: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One adaptive server step; returns new (x, m, v). Pure: inputs are not modified."""
    m_new = opts.beta1 * m + (1 - opts.beta1) * delta
    v_new = _V_RULES[v_rule](v, delta, opts.beta2)
    x_new = x + opts.server_lr * m_new / (np.sqrt(v_new) + opts.tau)
    return x_new, m_new, v_new


_V_RULES = {"adagrad": adagrad_v, "adam": adam_v, "yogi": yogi_v}


class FedOpt(Strategy):
    """Shared body of the three adaptive optimizers; a subclass only names its ``v`` rule."""

    name = "fedopt"
    v_rule = "adam"
    capabilities = Capabilities(server_state=True)

    def __init__(self, options: FedOptOptions | None = None,
                 sampling: SamplingOptions | None = None) -> None:
        super().__init__(sampling)
        self.options = options or FedOptOptions()
        self._m: np.ndarray | None = None
        self._v: np.ndarray | None = None

    @classmethod
    def from_options(cls, options: StrategyOptions, *, num_sites: int) -> Strategy:
        own = own_options(options, FedOptOptions)
        return cls(own, own.sampling())

    def initialize(self, parameters: Parameters) -> None:
        x = parameters.flatten(np.result_type(np.float32, *parameters.values()))
        self._m = np.zeros_like(x)
        self._v = np.full_like(x, self.options.tau ** 2)

    def aggregate(self, round_: int, current: Parameters, stack: UpdateStack,
                  kind: UpdateKind, aux: Mapping[str, Mapping[str, Parameters]]) -> Parameters:
        if self._m is None or self._v is None:
            self.initialize(current)
        assert self._m is not None and self._v is not None
        x = current.flatten(stack.dtype)
        delta = averaged_model(current, stack, kind) - x
        x_new, self._m, self._v = server_step(x, self._m, self._v, delta, self.options,
                                              self.v_rule)
        return Parameters.unflatten(x_new, current.spec)

    def state(self) -> dict[str, np.ndarray]:
        if self._m is None or self._v is None:
            return {}
        return {"m": self._m, "v": self._v}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        if set(state) != {"m", "v"}:
            raise ConfigError(f"{self.name} checkpoint state must hold 'm' and 'v'")
        self._m = np.array(state["m"])
        self._v = np.array(state["v"])


@register
class FedAdagrad(FedOpt):
    """FedAdagrad: an Adagrad step on the averaged change, at the server (Reddi et al. 2021)."""

    name = "fedadagrad"
    Options = FedAdagradOptions
    v_rule = "adagrad"


@register
class FedAdam(FedOpt):
    """FedAdam: an Adam step on the averaged change, at the server (Reddi et al. 2021)."""

    name = "fedadam"
    Options = FedAdamOptions
    v_rule = "adam"


@register
class FedYogi(FedOpt):
    """FedYogi: a Yogi step on the averaged change, at the server (Reddi et al. 2021)."""

    name = "fedyogi"
    Options = FedYogiOptions
    v_rule = "yogi"
