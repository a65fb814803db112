"""Federated gradient-boosted trees as a :class:`~fedcare.core.learning.Learner`.

The model is the ensemble's fixed-shape state (:mod:`fedcare.trees.rounds`, on the trees core
:mod:`fedcare.trees`). In a federated round the site half of strategy ``xgboost`` hands the
learner the correction :data:`SUMS_ONLY` (the site's approved study decides, never a task):
the site then returns the state unchanged plus its sums (quantile-sketch counts and label
sums, or the gradient/hessian histograms of the level being grown) divided by its row count,
weighted by that row count - so the engine's example-weighted mean, plain or through secure
aggregation, times the total weight is exactly the federation's sum, and the hub never needs
a site's own. Trained alone (the local-only and pooled baselines, which run with plain FedAvg
and no site half), the site takes the hub's step itself, one level per round, so a baseline
of the study's rounds grows the same ensemble from one site's rows.

Missing values (NaN) are kept: they take XGBoost's learned default direction at every split.
"""

from __future__ import annotations

import numpy as np

from fedcare.core.dataset import TaskType
from fedcare.core.errors import ConfigError, DataError, ValidationError
from fedcare.core.learning import FitResult
from fedcare.core.messages import TrainConfig
from fedcare.core.params import Parameters
from fedcare.learners.metrics import task_metrics
from fedcare.learners.options import XGBoostOptions, check_bins_vs_rows
from fedcare.trees import rounds

#: The correction a federated site's learner gets from the strategy's site half: "contribute
#: your sums" (without it the learner grows the ensemble alone, as the baselines do).
SUMS_ONLY_KEY = "sums_only"
SUMS_ONLY = Parameters({SUMS_ONLY_KEY: np.ones(1)})


def sums_only(correction: Parameters | None) -> bool:
    """Whether the site half of the approved study asks for the site's sums only."""
    if correction is None:
        return False
    if set(correction) != {SUMS_ONLY_KEY}:
        raise ConfigError("a correction term (SCAFFOLD) does not apply to xgboost")
    return True


class XGBoostLearner:
    """Histogram gradient-boosted trees; see the module docstring."""

    def __init__(self, n_features: int, task: TaskType, options: XGBoostOptions, *,
                 name: str = "xgboost") -> None:
        self.task = TaskType(task)
        self.name = name
        if n_features < 1:
            raise ConfigError(f"n_features must be >= 1, got {n_features}")
        wanted = {TaskType.BINARY: "binary:logistic", TaskType.REGRESSION: "reg:squarederror"}
        if self.task not in wanted:
            raise ConfigError("xgboost studies support binary classification and regression "
                              f"(got a {self.task.value} task)")
        if options.objective != wanted[self.task]:
            raise ConfigError(f"'model.objective' = {options.objective!r} does not fit the "
                              f"study's {self.task.value} task; use {wanted[self.task]!r}")
        self.options = options.tree_options()
        self.n_features = int(n_features)
        self._initial = Parameters(rounds.initial_state(self.options, self.n_features))
        self._spec = self._initial.spec

    def initial_parameters(self) -> Parameters:
        return self._initial

    def _state(self, parameters: Parameters) -> dict[str, np.ndarray]:
        self._spec.validate(parameters, what=f"parameters for model {self.name!r}")
        if not np.array_equal(parameters["hyper"], self._initial["hyper"]):
            raise ValidationError("the task's tree options differ from the approved study's")
        return dict(parameters.items())

    def _rows(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        if x.shape[1] != self.n_features:
            raise ValidationError(f"x has {x.shape[1]} features, model expects "
                                  f"{self.n_features}")
        return x

    def fit(self, parameters: Parameters, x: np.ndarray, y: np.ndarray, config: TrainConfig,
            *, seed: int, correction: Parameters | None = None) -> FitResult:
        federated = sums_only(correction)
        state = self._state(parameters)
        n = len(x)
        if n == 0:
            raise DataError("cannot train on zero rows")
        if check_bins_vs_rows(self.options, n, self.name) is not None:
            raise ConfigError(f"'model.max_bin' = {self.options.max_bin} is more bins than "
                              f"this site's {n} training rows; use a value in [2, {max(n, 2)}]")
        xs, ys = self._rows(x), np.asarray(y, dtype=np.float64).reshape(-1)
        sums = rounds.site_sums(state, xs, ys, self.options)
        if federated:
            out = dict(state)
            for k in rounds.SUMS:
                out[k] = sums[k] / n
        else:
            out = rounds.advance(state, sums, self.options)
        metrics = {}
        if rounds.complete_trees(state) > 0:
            metrics = {"train_loss": task_metrics(
                self.task, rounds.predict_margin(state, xs)[:, None], ys)["loss"]}
        return FitResult(Parameters(out), num_examples=n, num_steps=1, metrics=metrics)

    def evaluate(self, parameters: Parameters, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        if len(x) == 0:
            return {}
        return task_metrics(self.task, self.scores(parameters, x),
                            np.asarray(y, dtype=np.float64).reshape(-1))

    def scores(self, parameters: Parameters, x: np.ndarray) -> np.ndarray:
        """Margins (the positive class's log-odds for binary:logistic), (n, 1)."""
        return rounds.predict_margin(self._state(parameters), self._rows(x))[:, None]
