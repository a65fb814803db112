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
from dataclasses import dataclass

import numpy as np

from fedcare.core.errors import ConfigError
from fedcare.core.messages import UpdateKind
from fedcare.core.params import Parameters
from fedcare.strategies.aggregate import UpdateStack
from fedcare.strategies.base import SamplingOptions, Strategy, averaged_model


@dataclass(frozen=True)
class FedOptOptions:
    server_lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        problems = []
        if not self.server_lr > 0:
            problems.append("strategy.server_lr must be > 0")
        if not 0 <= self.beta1 < 1 or not 0 <= self.beta2 < 1:
            problems.append("strategy.beta1 and strategy.beta2 must be in [0, 1)")
        if not self.tau > 0:
            problems.append("strategy.tau must be > 0")
        if problems:
            raise ConfigError(problems)


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

    def __init__(self, options: FedOptOptions | None = None,
                 sampling: SamplingOptions | None = None) -> None:
        super().__init__(sampling)
        self.options = options or FedOptOptions()
        self._m: np.ndarray | None = None
        self._v: np.ndarray | None = None

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


class FedAdagrad(FedOpt):
    name = "fedadagrad"
    v_rule = "adagrad"


class FedAdam(FedOpt):
    name = "fedadam"
    v_rule = "adam"


class FedYogi(FedOpt):
    name = "fedyogi"
    v_rule = "yogi"
