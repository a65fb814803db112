"""A scikit-learn linear model as a :class:`~fedcare.core.learning.Learner`.

``SGDClassifier(loss="log_loss")`` (logistic regression, one-vs-rest for more than two
classes) or ``SGDRegressor`` trained with ``partial_fit``. Its weights are plain arrays,
``coef`` and ``intercept`` (float64, scikit-learn's own shapes), so FedAvg works unchanged.

scikit-learn's SGD updates per *sample*; mini-batches here only fix the visiting order (the
same rule as the torch learner), and ``num_steps`` counts mini-batches. There is no gradient
hook, so FedProx and SCAFFOLD are refused rather than silently ignored.

Evaluation metrics are shared with the torch learner (:mod:`fedcare.learners.metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import SGDClassifier, SGDRegressor

from fedcare.core.dataset import TaskType
from fedcare.core.errors import ConfigError, DataError, ValidationError
from fedcare.core.learning import FitResult
from fedcare.core.messages import TrainConfig
from fedcare.core.params import Parameters
from fedcare.learners.metrics import task_metrics


class SklearnLinearLearner:
    """Linear model trained by scikit-learn's SGD; see the module docstring."""

    def __init__(self, n_features: int, task: TaskType, *, classes: Sequence[int] | None = None,
                 seed: int = 0, name: str = "sgd_linear") -> None:
        self.task = TaskType(task)
        self.name = name
        self.seed = seed
        if n_features < 1:
            raise ConfigError(f"n_features must be >= 1, got {n_features}")
        self.n_features = int(n_features)
        if self.task is TaskType.REGRESSION:
            self.classes: list[int] = []
            rows = 0
        else:
            self.classes = sorted(classes if classes is not None else
                                  ([0, 1] if self.task is TaskType.BINARY else []))
            if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
                raise ConfigError("a classification learner needs >= 2 distinct classes up front "
                                  f"(got {self.classes})")
            if self.task is TaskType.BINARY and len(self.classes) != 2:
                raise ConfigError(f"binary task needs exactly 2 classes, got {self.classes}")
            rows = 1 if len(self.classes) == 2 else len(self.classes)
        coef_shape = (rows, self.n_features) if rows else (self.n_features,)
        self._initial = Parameters({"coef": np.zeros(coef_shape),
                                    "intercept": np.zeros(max(rows, 1))})
        self._spec = self._initial.spec

    def initial_parameters(self) -> Parameters:
        return self._initial

    def _check(self, parameters: Parameters) -> None:
        self._spec.validate(parameters, what=f"parameters for model {self.name!r}")

    def _estimator(self, config: TrainConfig) -> SGDClassifier | SGDRegressor:
        problems = []
        if config.proximal_mu > 0:
            problems.append("proximal_mu > 0 (FedProx) is not supported by the scikit-learn "
                            "learner; use a torch model for FedProx/SCAFFOLD")
        if config.optimizer != "sgd" or config.momentum > 0:
            problems.append("the scikit-learn learner supports optimizer 'sgd' without momentum")
        if problems:
            raise ConfigError(problems)
        common = {"learning_rate": "constant", "eta0": config.lr, "alpha": config.weight_decay,
                  "penalty": "l2", "shuffle": False, "random_state": self.seed}
        if self.task is TaskType.REGRESSION:
            return SGDRegressor(**common)
        return SGDClassifier(loss="log_loss", **common)

    def fit(self, parameters: Parameters, x: np.ndarray, y: np.ndarray, config: TrainConfig,
            *, seed: int, correction: Parameters | None = None) -> FitResult:
        if correction is not None:
            raise ConfigError("a correction term (SCAFFOLD) is not supported by the "
                              "scikit-learn learner; use a torch model for FedProx/SCAFFOLD")
        est = self._estimator(config)
        self._check(parameters)
        n = len(x)
        if n == 0:
            raise DataError("cannot train on zero rows")
        x = np.asarray(x, dtype=np.float64).reshape(n, -1)
        y = np.asarray(y).reshape(-1)
        est.coef_ = np.array(parameters["coef"], dtype=np.float64, order="C")
        est.intercept_ = np.array(parameters["intercept"], dtype=np.float64)
        extra = {} if self.task is TaskType.REGRESSION else {"classes": self.classes}
        rng = np.random.default_rng(seed)
        steps, limit = 0, config.local_steps
        epochs = config.local_epochs if limit == 0 else -1
        epoch = 0
        while epoch != epochs and not (limit and steps >= limit):
            epoch += 1
            perm = rng.permutation(n)
            for i in range(0, n, config.batch_size):
                idx = perm[i:i + config.batch_size]
                est.partial_fit(x[idx], y[idx], **extra)
                steps += 1
                if steps == limit:
                    break
        coef = np.asarray(est.coef_, dtype=np.float64).reshape(self._spec["coef"].shape)
        intercept = np.asarray(est.intercept_, dtype=np.float64).reshape(-1)
        if not (np.isfinite(coef).all() and np.isfinite(intercept).all()):
            raise DataError("training diverged (weights are NaN/Inf); lower the learning rate")
        out = Parameters({"coef": coef.copy(), "intercept": intercept.copy()})
        train_metrics = task_metrics(self.task, self._logits(out, x), self._targets(y))
        return FitResult(out, num_examples=n, num_steps=steps,
                         metrics={"train_loss": train_metrics["loss"]})

    def _logits(self, parameters: Parameters, x: np.ndarray) -> np.ndarray:
        """Scores as logits: the decision function, or log of the one-vs-rest probabilities."""
        scores = x @ np.atleast_2d(parameters["coef"]).T + parameters["intercept"]
        if self.task is not TaskType.MULTICLASS:
            return scores
        proba = 1.0 / (1.0 + np.exp(-scores))  # scikit-learn's OvR predict_proba
        proba /= proba.sum(axis=1, keepdims=True)
        return np.log(np.clip(proba, 1e-300, None))

    def evaluate(self, parameters: Parameters, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        if len(x) == 0:
            return {}
        return task_metrics(self.task, self.scores(parameters, x), self._targets(y))

    def scores(self, parameters: Parameters, x: np.ndarray) -> np.ndarray:
        """Logits for rows ``x`` (see :meth:`_logits`; values for regression), as the torch
        learner's :meth:`~fedcare.learners.torch_learner.TorchLearner.scores`."""
        self._check(parameters)
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        if x.shape[1] != self.n_features:
            raise ValidationError(f"x has {x.shape[1]} features, model expects {self.n_features}")
        return self._logits(parameters, x)

    def _targets(self, y: np.ndarray) -> np.ndarray:
        """Labels as :func:`task_metrics` wants them: 0/1, or column positions."""
        y = np.asarray(y).reshape(-1)
        if self.task is TaskType.BINARY:
            return (y == self.classes[1]).astype(np.float64)
        if self.task is TaskType.MULTICLASS:
            return np.searchsorted(np.asarray(self.classes), y)
        return y
