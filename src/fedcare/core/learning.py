"""The contract between the engine and the code that trains at a site.

A learner is *stateless with respect to sites*: it owns one model object (so a process that
simulates 100 sites holds one model, not 100) and is handed the global parameters and a site's
arrays on every call. Everything that must persist at a site between rounds (e.g. SCAFFOLD's
control variate) is kept by the site executor, not the learner.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from fedcare.core.messages import TrainConfig
from fedcare.core.params import Parameters


@dataclass(frozen=True)
class FitResult:
    parameters: Parameters
    num_examples: int
    num_steps: int
    metrics: Mapping[str, float] = field(default_factory=dict)


@runtime_checkable
class Learner(Protocol):
    """Trains and evaluates one model architecture on numpy arrays."""

    name: str

    def initial_parameters(self) -> Parameters:
        """The model's initial weights (deterministic under the learner's seed)."""
        ...

    def fit(self, parameters: Parameters, x: np.ndarray, y: np.ndarray, config: TrainConfig,
            *, seed: int, correction: Parameters | None = None) -> FitResult:
        """Train from ``parameters`` on (x, y) and return the new weights.

        ``seed`` fixes the mini-batch order (``numpy.random.default_rng(seed)``; one
        permutation per epoch). ``config.proximal_mu`` > 0 adds FedProx's proximal term
        mu/2 * ||w - parameters||^2. ``correction``, when given, is added to every gradient
        before the step (SCAFFOLD's c - c_i).
        """
        ...

    def evaluate(self, parameters: Parameters, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Loss and task metrics (accuracy, auc for binary; mse, mae for regression)."""
        ...

    def scores(self, parameters: Parameters, x: np.ndarray) -> np.ndarray:
        """The model's outputs for rows ``x``, float64 (n, outputs): logits (one column, the
        positive class's log-odds, for binary) or values (regression). A saved model's
        predictions are made from these."""
        ...
