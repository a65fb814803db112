"""Evaluation metrics shared by every learner, in numpy (no scikit-learn import needed).

AUC is the exact rank-based (Mann-Whitney) statistic, ties included: ~20 us for a site's
test set where ``sklearn.metrics.roc_auc_score`` takes ~2 ms, and every site evaluates every
round. A Hypothesis test checks it against scikit-learn.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedcare.core.dataset import TaskType
from fedcare.core.errors import ConfigError

#: Metrics a study may name as ``study.primary_metric``, per task, with their direction
#: (True: higher is better). Every site reports all of them for its task, so the choice can
#: change after a run without asking the sites again.
PRIMARY_METRICS: dict[TaskType, dict[str, bool]] = {
    TaskType.BINARY: {"accuracy": True, "auc": True, "balanced_accuracy": True, "f1": True,
                      "brier": False},
    TaskType.MULTICLASS: {"accuracy": True, "balanced_accuracy": True, "f1": True,
                          "brier": False},
    TaskType.REGRESSION: {"rmse": False, "mse": False, "mae": False},
}
#: The primary metric of a study that names none (what fedcare always reported first).
DEFAULT_PRIMARY: dict[TaskType, str] = {TaskType.BINARY: "accuracy",
                                        TaskType.MULTICLASS: "accuracy",
                                        TaskType.REGRESSION: "mse"}
#: Prefix of the score of the trivial (best constant) prediction on the same test rows.
TRIVIAL = "trivial_"


def primary_metric(task: TaskType | str, requested: str | None = None) -> tuple[str, bool]:
    """The study's primary metric for ``task`` and whether higher is better.

    One function for the simulation and the hub, so both write the same ``primary_metric``
    and ``higher_is_better`` into the history. Raises :class:`ConfigError` naming the allowed
    values when ``requested`` does not apply to the task (AUC of a regression, say).
    """
    task = TaskType(task)
    allowed = PRIMARY_METRICS[task]
    name = DEFAULT_PRIMARY[task] if requested is None else requested
    if name not in allowed:
        raise ConfigError(f"'study.primary_metric': {name!r} does not apply to a {task.value} "
                          f"task; use one of {', '.join(allowed)}")
    return name, allowed[name]


def primary_metric_meta(task: TaskType | str, requested: str | None = None) -> dict[str, Any]:
    """:func:`primary_metric` as the history's ``primary_metric`` and ``higher_is_better``."""
    name, higher = primary_metric(task, requested)
    return {"primary_metric": name, "higher_is_better": higher}




def binary_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney U statistic (tied scores get average ranks).

    Equal to ``sklearn.metrics.roc_auc_score(labels, scores)`` but ~100x faster on small
    arrays, which matters because every site evaluates every round. ``labels`` are 0/1 and
    both classes must be present.
    """
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse.reshape(-1)]
    positive = labels == 1
    n_pos = float(positive.sum())
    n_neg = float(len(labels)) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def task_metrics(task: TaskType, logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Loss, every primary metric of the task and the context a reader needs, from raw model
    outputs ``logits`` of shape (n, outputs).

    BINARY: ``loss`` (log-loss), ``accuracy`` (logit > 0), ``balanced_accuracy``, ``f1`` (of
    the positive class), ``brier`` and ``auc`` when both classes are present; ``prevalence``
    (share of positive test labels). MULTICLASS: ``loss`` (cross-entropy of the softmax),
    ``accuracy``, ``balanced_accuracy``, ``f1`` (macro), ``brier`` (multi-class, sum over
    classes) and ``class_share_<k>``. REGRESSION: ``loss`` (= ``mse``), ``mse``, ``rmse``,
    ``mae``. Each score also comes as ``trivial_<name>``: the score of the best constant
    prediction on the same rows (majority class, 0.5 AUC, the prevalence as probability, the
    mean), so a model that only learned the base rate cannot look good. Prevalence and class
    shares are computed from the site's own test labels; no row leaves the site.
    """
    logits = np.asarray(logits, dtype=np.float64).reshape(len(logits), -1)
    if task is TaskType.BINARY:
        return _binary(logits[:, 0], np.asarray(y).reshape(-1).astype(np.float64))
    if task is TaskType.MULTICLASS:
        return _multiclass(logits, np.asarray(y).reshape(-1).astype(np.int64))
    return _regression(logits[:, 0], np.asarray(y, dtype=np.float64).reshape(-1))


def _binary(s: np.ndarray, t: np.ndarray) -> dict[str, float]:
    loss = np.mean(np.maximum(s, 0) - s * t + np.log1p(np.exp(-np.abs(s))))
    prob = 0.5 * (1.0 + np.tanh(0.5 * s))  # the sigmoid without overflow
    pred = s > 0
    truth = t > 0.5
    p = float(np.mean(truth))
    out = {"loss": float(loss), "accuracy": float(np.mean(pred == truth)),
           "balanced_accuracy": _balanced_accuracy(pred.astype(np.int64),
                                                   truth.astype(np.int64), 2),
           "f1": _f1(pred, truth), "brier": float(np.mean((prob - t) ** 2)), "prevalence": p}
    out.update({f"{TRIVIAL}accuracy": max(p, 1.0 - p), f"{TRIVIAL}balanced_accuracy": 0.5,
                # always "positive" is the constant with the best F1 (always negative has 0)
                f"{TRIVIAL}f1": 2.0 * p / (1.0 + p), f"{TRIVIAL}brier": p * (1.0 - p),
                f"{TRIVIAL}loss": _entropy(np.array([p, 1.0 - p]))})
    if 0 < t.sum() < len(t) and np.all((t == 0) | (t == 1)):
        # Ranked by logit: the AUC is the same as by probability, without sigmoid
        # saturating large logits into ties (and overflowing exp).
        out["auc"] = binary_auc(t, s)
        out[f"{TRIVIAL}auc"] = 0.5
    return out


def _multiclass(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    k = logits.shape[1]
    top = logits.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    loss = np.mean(lse - logits[np.arange(len(labels)), labels])
    proba = np.exp(logits - lse[:, None])
    onehot = np.eye(k)[labels]
    pred = logits.argmax(1)
    shares = onehot.mean(axis=0)
    out = {"loss": float(loss), "accuracy": float(np.mean(pred == labels)),
           "balanced_accuracy": _balanced_accuracy(pred, labels, k),
           "f1": float(np.mean([_f1(pred == c, labels == c) for c in range(k)])),
           "brier": float(np.mean(((proba - onehot) ** 2).sum(axis=1)))}
    out.update({f"class_share_{c}": float(shares[c]) for c in range(k)})
    top_share = float(shares.max())
    out.update({f"{TRIVIAL}accuracy": top_share,
                f"{TRIVIAL}balanced_accuracy": 1.0 / int(np.count_nonzero(shares)),
                f"{TRIVIAL}f1": 2.0 * top_share / (1.0 + top_share) / k,
                f"{TRIVIAL}brier": float(1.0 - np.sum(shares ** 2)),
                f"{TRIVIAL}loss": _entropy(shares)})
    return out


def _regression(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    err = pred - y
    mse = float(np.mean(err ** 2))
    spread = y - y.mean()
    var = float(np.mean(spread ** 2))
    return {"loss": mse, "mse": mse, "rmse": float(np.sqrt(mse)),
            "mae": float(np.mean(np.abs(err))), f"{TRIVIAL}loss": var, f"{TRIVIAL}mse": var,
            f"{TRIVIAL}rmse": float(np.sqrt(var)), f"{TRIVIAL}mae": float(np.mean(np.abs(spread)))}


def _balanced_accuracy(pred: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Mean recall over the classes present in ``labels`` (as scikit-learn computes it)."""
    recalls = [float(np.mean(pred[labels == c] == c)) for c in range(k) if np.any(labels == c)]
    return float(np.mean(recalls)) if recalls else 0.0


def _f1(pred: np.ndarray, truth: np.ndarray) -> float:
    """F1 of one class from boolean predictions; 0 when the class is neither predicted nor
    present (scikit-learn's ``zero_division=0``)."""
    tp = float(np.sum(pred & truth))
    denominator = float(np.sum(pred) + np.sum(truth))
    return 2.0 * tp / denominator if denominator else 0.0


def _entropy(shares: np.ndarray) -> float:
    """Log-loss of predicting the class shares themselves: the trivial model's loss."""
    present = shares[shares > 0]
    return float(-np.sum(present * np.log(present)))
