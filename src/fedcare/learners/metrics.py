"""Evaluation metrics shared by every learner, in numpy (no scikit-learn import needed).

AUC is the exact rank-based (Mann-Whitney) statistic, ties included: ~20 us for a site's
test set where ``sklearn.metrics.roc_auc_score`` takes ~2 ms, and every site evaluates every
round. A Hypothesis test checks it against scikit-learn.
"""

from __future__ import annotations

import numpy as np

from fedcare.core.dataset import TaskType


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
    """Loss and task metrics from raw model outputs ``logits`` of shape (n, outputs).

    BINARY: ``loss`` (log-loss), ``accuracy`` (logit > 0) and ``auc`` when both classes are
    present. MULTICLASS: ``loss`` (cross-entropy of the softmax) and ``accuracy``.
    REGRESSION: ``loss`` (= ``mse``), ``mse`` and ``mae``.
    """
    logits = np.asarray(logits, dtype=np.float64).reshape(len(logits), -1)
    if task is TaskType.BINARY:
        s = logits[:, 0]
        t = np.asarray(y).reshape(-1).astype(np.float64)
        loss = np.mean(np.maximum(s, 0) - s * t + np.log1p(np.exp(-np.abs(s))))
        out = {"loss": float(loss), "accuracy": float(np.mean((s > 0) == (t > 0.5)))}
        if 0 < t.sum() < len(t) and np.all((t == 0) | (t == 1)):
            # Ranked by logit: the AUC is the same as by probability, without sigmoid
            # saturating large logits into ties (and overflowing exp).
            out["auc"] = binary_auc(t, s)
        return out
    if task is TaskType.MULTICLASS:
        labels = np.asarray(y).reshape(-1).astype(np.int64)
        top = logits.max(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        loss = np.mean(lse - logits[np.arange(len(labels)), labels])
        return {"loss": float(loss), "accuracy": float(np.mean(logits.argmax(1) == labels))}
    err = logits[:, 0] - np.asarray(y, dtype=np.float64).reshape(-1)
    mse = float(np.mean(err**2))
    return {"loss": mse, "mse": mse, "mae": float(np.mean(np.abs(err)))}
