"""Federated gradient-boosted trees as a :class:`~fedcare.core.learning.Learner`.

The model is the ensemble's fixed-shape state (:mod:`fedcare.core.gbt`). In a federated
round the site half of strategy ``xgboost`` hands the learner the correction
:data:`~fedcare.strategies.xgboost.SUMS_ONLY` (the site's approved study decides, never a
task): the site then returns the state unchanged plus its sums (quantile-sketch counts and label
sums, or the gradient/hessian histograms of the level being grown) divided by its row
count, weighted by that row count - so the engine's example-weighted mean, plain or through
secure aggregation, times the total weight is exactly the federation's sum, and the hub never
needs a site's own. Trained alone (the local-only and pooled baselines, whose rounds train
with plain FedAvg and no site half), the site applies the hub's step itself, one level per round,
so a baseline of the study's rounds grows the same ensemble from one site's rows.

Missing values (NaN) are kept: they take XGBoost's learned default direction at every split.
"""

from __future__ import annotations

import numpy as np

from fedcare.core import gbt
from fedcare.core.dataset import TaskType
from fedcare.core.errors import ConfigError, DataError, ValidationError
from fedcare.core.learning import FitResult
from fedcare.core.messages import TrainConfig
from fedcare.core.params import Parameters
from fedcare.learners.metrics import task_metrics
from fedcare.learners.options import XGBoostOptions


def sums_only(correction: Parameters | None) -> bool:
    """Whether the site half of the approved study asks for the site's sums only."""
    if correction is None:
        return False
    if set(correction) != {gbt.SUMS_ONLY_KEY}:
        raise ConfigError("a correction term (SCAFFOLD) does not apply to xgboost")
    return True


def hyper_of(n_features: int, options: XGBoostOptions) -> gbt.Hyper:
    o = options
    return gbt.Hyper(int(n_features), o.n_trees, o.max_depth, o.max_bin, o.learning_rate,
                     o.reg_lambda, o.gamma, o.min_child_weight, o.objective, o.base_score)


class XGBoostLearner:
    """Histogram gradient-boosted trees; see the module docstring."""

    def __init__(self, n_features: int, task: TaskType, options: XGBoostOptions, *,
                 name: str = "xgboost") -> None:
        self.task = TaskType(task)
        self.name = name
        self.options = options
        if n_features < 1:
            raise ConfigError(f"n_features must be >= 1, got {n_features}")
        wanted = {TaskType.BINARY: "binary:logistic", TaskType.REGRESSION: "reg:squarederror"}
        if self.task not in wanted:
            raise ConfigError("xgboost studies support binary classification and regression "
                              f"(got a {self.task.value} task)")
        if options.objective != wanted[self.task]:
            raise ConfigError(f"'model.objective' = {options.objective!r} does not fit the "
                              f"study's {self.task.value} task; use {wanted[self.task]!r}")
        self.hyper = hyper_of(n_features, options)
        self._initial = Parameters(gbt.initial_state(self.hyper))
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
        if x.shape[1] != self.hyper.n_features:
            raise ValidationError(f"x has {x.shape[1]} features, model expects "
                                  f"{self.hyper.n_features}")
        return x

    def fit(self, parameters: Parameters, x: np.ndarray, y: np.ndarray, config: TrainConfig,
            *, seed: int, correction: Parameters | None = None) -> FitResult:
        federated = sums_only(correction)
        state = self._state(parameters)
        n = len(x)
        if n == 0:
            raise DataError("cannot train on zero rows")
        if n < self.hyper.max_bin:
            raise ConfigError(f"'model.max_bin' = {self.hyper.max_bin} is more bins than this "
                              f"site's {n} training rows; use a value in [2, {max(n, 2)}]")
        xs, ys = self._rows(x), np.asarray(y, dtype=np.float64).reshape(-1)
        sums = gbt.site_sums(state, xs, ys)
        if federated:
            out = dict(state)
            for k in gbt.SUMS:
                out[k] = sums[k] / n
        else:
            out = gbt.advance(state, sums)
        metrics = {}
        if gbt.complete_trees(state) > 0 or state["cursor"][0] == gbt.GROW:
            metrics = {"train_loss": task_metrics(
                self.task, gbt.predict_margin(state, xs)[:, None], ys)["loss"]}
        return FitResult(Parameters(out), num_examples=n, num_steps=1, metrics=metrics)

    def evaluate(self, parameters: Parameters, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        if len(x) == 0:
            return {}
        return task_metrics(self.task, self.scores(parameters, x),
                            np.asarray(y, dtype=np.float64).reshape(-1))

    def scores(self, parameters: Parameters, x: np.ndarray) -> np.ndarray:
        """Margins (the positive class's log-odds for binary:logistic), (n, 1)."""
        state = self._state(parameters)
        return gbt.predict_margin(state, self._rows(x))[:, None]
