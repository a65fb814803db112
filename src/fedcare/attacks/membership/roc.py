"""ROC curves and the low-false-positive figures a membership-inference audit reports.

Carlini et al. (2022, "Membership Inference Attacks From First Principles") argue that an
attack's average-case AUC hides what matters for privacy: whether it identifies *some*
members with near certainty. So besides the AUC the audit reports the true-positive rate at
FPR = 1% and 0.1% — read off the empirical ROC as the best TPR among thresholds whose FPR does
not exceed the target (their convention; no interpolation, which would invent precision).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedcare.core.errors import ValidationError
from fedcare.learners.metrics import binary_auc


@dataclass(frozen=True)
class Roc:
    """Empirical ROC: ``fpr[i], tpr[i]`` for "member if score >= thresholds[i]"."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float


def roc_curve(is_member: np.ndarray, scores: np.ndarray) -> Roc:
    """ROC of ``scores`` (higher = more likely a member) against 0/1 ``is_member`` labels.

    Tied scores form one operating point, so the curve never claims a threshold that splits
    identical scores. Starts at (0, 0) and ends at (1, 1).
    """
    labels = np.asarray(is_member).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels.shape != s.shape:
        raise ValidationError(f"{labels.size} labels but {s.size} scores")
    if not np.isin(labels, (0, 1)).all():
        raise ValidationError("membership labels must be 0 (non-member) or 1 (member)")
    if not np.isfinite(s).all():
        raise ValidationError("attack scores contain NaN or Inf")
    pos = int(labels.sum())
    neg = labels.size - pos
    if pos == 0 or neg == 0:
        raise ValidationError(f"an audit needs both members and non-members; got {pos} "
                              f"members and {neg} non-members")
    order = np.argsort(-s, kind="stable")
    s_sorted, l_sorted = s[order], labels[order]
    last_of_tie = np.r_[np.diff(s_sorted) != 0, True]
    tp = np.cumsum(l_sorted)[last_of_tie]
    fp = np.cumsum(1 - l_sorted)[last_of_tie]
    fpr = np.r_[0.0, fp / neg]
    tpr = np.r_[0.0, tp / pos]
    thresholds = np.r_[np.inf, s_sorted[last_of_tie]]
    return Roc(fpr, tpr, thresholds, binary_auc(labels.astype(np.float64), s))


def tpr_at_fpr(roc: Roc, target_fpr: float) -> float:
    """Largest TPR among operating points with FPR <= ``target_fpr`` (0 if only the origin)."""
    if not 0 <= target_fpr <= 1:
        raise ValidationError(f"target FPR must be in [0, 1], got {target_fpr}")
    ok = roc.fpr <= target_fpr + 1e-12
    return float(roc.tpr[ok].max())
