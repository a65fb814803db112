"""Privacy audit: membership-inference attacks against a trained model.

The loss-threshold attack (Yeom et al. 2018) and LiRA with shadow models (Carlini et al.
2022) measure empirically what a differential-privacy epsilon bounds in theory: how well an
attacker holding a model can tell the rows it was trained on from rows it never saw.
:func:`audit_run` audits a ``fedcare simulate`` output folder.
"""

from __future__ import annotations

from fedcare.attacks.membership.attacks import balanced_membership, lira_scores, loss_scores
from fedcare.attacks.membership.figure import html_fragment, roc_png
from fedcare.attacks.membership.folders import (
    Candidates,
    RunFolder,
    candidates_of,
    load_run,
    study_privacy,
)
from fedcare.attacks.membership.roc import Roc, roc_curve, tpr_at_fpr
from fedcare.attacks.membership.run import (
    ATTACKS,
    AuditResult,
    AuditSettings,
    attack,
    audit_run,
    evaluate_attack,
)
from fedcare.attacks.membership.scores import confidence_logit, model_outputs, per_example_loss

__all__ = [
    "ATTACKS",
    "AuditResult",
    "AuditSettings",
    "Candidates",
    "Roc",
    "RunFolder",
    "attack",
    "audit_run",
    "balanced_membership",
    "candidates_of",
    "confidence_logit",
    "evaluate_attack",
    "html_fragment",
    "lira_scores",
    "load_run",
    "loss_scores",
    "model_outputs",
    "per_example_loss",
    "roc_curve",
    "roc_png",
    "study_privacy",
    "tpr_at_fpr",
]
