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
class DpSgdFacts:
    """What a DP-SGD fit spent, as the site's ledger and the hub's accountant read it: the
    Poisson sample rate ``q``, the noise multiplier ``z``, the per-example clip and the
    optimizer steps (Abadi et al. 2016).

    On the wire they travel as four numbers of the update's ``metrics`` (:meth:`to_metrics`,
    the keys below: what every node has always sent), and the hub reads them back through
    :meth:`from_metrics` alone, with the bounds of :mod:`fedcare.core.limits`."""

    sample_rate: float
    noise_multiplier: float
    clip: float
    steps: int

    #: The metric keys, in the order they are sent.
    SAMPLE_RATE = "dp_sample_rate"
    NOISE_MULTIPLIER = "dp_noise_multiplier"
    CLIP = "dp_clip"
    STEPS = "steps"
    KEYS = (SAMPLE_RATE, NOISE_MULTIPLIER, CLIP, STEPS)

    def to_metrics(self) -> dict[str, float]:
        return {self.SAMPLE_RATE: self.sample_rate,
                self.NOISE_MULTIPLIER: self.noise_multiplier,
                self.CLIP: self.clip, self.STEPS: float(self.steps)}

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, float]) -> DpSgdFacts | None:
        """The facts an update's metrics carry (None: not a DP-SGD update). Out-of-range
        values are refused (:class:`ValueError`): ``q`` in (0, 1], ``z`` and the clip in
        [0, MAX_METRIC], the steps an integer count. An older node sent no ``dp_clip``: 0."""
        from fedcare.core.limits import MAX_COUNT, MAX_METRIC, check_float, check_int

        if cls.SAMPLE_RATE not in metrics:
            return None
        steps = check_float(metrics.get(cls.STEPS), "DP-SGD steps", 0, MAX_COUNT)
        if steps != int(steps):
            raise ValueError(f"DP-SGD steps must be an integer, got {steps!r}")
        return cls(
            sample_rate=check_float(metrics[cls.SAMPLE_RATE], "DP-SGD sample rate", 0.0, 1.0,
                                    low_open=True),
            noise_multiplier=check_float(metrics.get(cls.NOISE_MULTIPLIER),
                                         "DP-SGD noise multiplier", 0.0, MAX_METRIC),
            clip=check_float(metrics.get(cls.CLIP, 0.0), "DP-SGD clip", 0.0, MAX_METRIC),
            steps=check_int(int(steps), "DP-SGD steps", 0, MAX_COUNT))


@dataclass(frozen=True)
class FitResult:
    parameters: Parameters
    num_examples: int
    num_steps: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    #: A DP-SGD fit's accounting facts (None: the fit ran without DP-SGD).
    dp: DpSgdFacts | None = None


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
