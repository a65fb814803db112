"""Audit a finished study: can an attacker tell the rows it was trained on from held-out rows?

The rows come from :mod:`fedcare.attacks.membership.folders`. The study's epsilon (if it ran with
differential privacy) is read from ``history.json`` and reported beside the attack's
success: the guarantee and its empirical check side by side.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedcare.attacks.membership.attacks import lira_scores, loss_scores
from fedcare.attacks.membership.figure import html_fragment, roc_png
from fedcare.attacks.membership.folders import Candidates, candidates_of, load_run, study_privacy
from fedcare.attacks.membership.roc import roc_curve, tpr_at_fpr
from fedcare.attacks.membership.scores import confidence_logit, model_outputs, per_example_loss
from fedcare.attacks.membership.shadows import ShadowProgress, train_shadows
from fedcare.config import StudyConfig
from fedcare.core.errors import ConfigError, ValidationError
from fedcare.core.files import atomic_write
from fedcare.core.learning import Learner
from fedcare.core.messages import TrainConfig
from fedcare.core.params import Parameters

ATTACKS = ("loss", "lira")
LOW_FPRS = (0.01, 0.001)
#: ROC points kept in the JSON (the full curve can have one point per example)
_ROC_POINTS = 200


@dataclass(frozen=True)
class AuditSettings:
    """What to audit and how. ``epochs`` = shadow training passes (default: the study's
    rounds x local_epochs); ``site`` = one site's rows (default: every site's);
    ``site_data`` = that site's own table, needed for a networked study (its rows never left
    the site, so only the site can audit them)."""

    attack: str = "loss"
    shadows: int = 8
    online: bool = True
    epochs: int | None = None
    seed: int = 0
    site: str | None = None
    site_data: Path | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.site_data is not None and self.site is None:
            problems.append("site_data needs site (the name of the site whose table it is)")
        if self.attack not in ATTACKS:
            problems.append(f"attack must be one of {ATTACKS}, got {self.attack!r}")
        if self.attack == "lira" and self.shadows < 2:
            problems.append(f"LiRA needs at least 2 shadow models, got {self.shadows}")
        if self.epochs is not None and self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if problems:
            raise ConfigError(problems, source="privacy audit")


@dataclass(frozen=True)
class AuditResult:
    attack: str
    variant: str
    site: str
    members: int
    non_members: int
    auc: float
    tpr_at_fpr: dict[str, float]
    privacy: dict[str, Any]
    shadows: int = 0
    roc_fpr: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    roc_tpr: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def to_dict(self) -> dict[str, Any]:
        keep = np.unique(np.linspace(0, len(self.roc_fpr) - 1,
                                     min(len(self.roc_fpr), _ROC_POINTS)).astype(int))
        return {"attack": self.attack, "variant": self.variant, "site": self.site,
                "members": self.members, "non_members": self.non_members, "auc": self.auc,
                "tpr_at_fpr": dict(self.tpr_at_fpr), "privacy": dict(self.privacy),
                "shadows": self.shadows,
                "fpr_resolution": 1.0 / self.non_members,
                "roc": {"fpr": self.roc_fpr[keep].tolist(), "tpr": self.roc_tpr[keep].tolist()}}


# ------------------------------------------------------------------------ the attacks
def attack(learner: Learner, parameters: Parameters, data: Candidates, settings: AuditSettings,
           *, make_shadow: Callable[[int], Learner] | None = None,
           train: TrainConfig | None = None,
           progress: ShadowProgress | None = None) -> np.ndarray:
    """Scores (higher = member) of ``settings.attack`` against the model ``parameters``."""
    logits = model_outputs(learner, parameters, data.x)
    if settings.attack == "loss":
        return loss_scores(per_example_loss(data.task, logits, data.y))
    if make_shadow is None or train is None:
        raise ConfigError("LiRA needs a shadow-model factory and a training recipe")
    conf, membership = train_shadows(make_shadow, data.x, data.y, data.task, train,
                                     settings.shadows, seed=settings.seed, progress=progress)
    return lira_scores(confidence_logit(data.task, logits, data.y), conf, membership,
                       online=settings.online)


def evaluate_attack(data: Candidates, scores: np.ndarray, settings: AuditSettings,
                    privacy: Mapping[str, Any]) -> AuditResult:
    roc = roc_curve(data.is_member, scores)
    variant = ("threshold" if settings.attack == "loss"
               else "online" if settings.online else "offline")
    return AuditResult(
        attack=settings.attack, variant=variant, site=data.name,
        members=int(data.is_member.sum()), non_members=int((data.is_member == 0).sum()),
        auc=roc.auc, tpr_at_fpr={str(f): tpr_at_fpr(roc, f) for f in LOW_FPRS},
        privacy=dict(privacy), shadows=settings.shadows if settings.attack == "lira" else 0,
        roc_fpr=roc.fpr, roc_tpr=roc.tpr)


def shadow_recipe(cfg: StudyConfig, epochs: int | None) -> TrainConfig:
    """The study's local training recipe, run for ``epochs`` passes (default rounds x
    local_epochs: about as many passes as the target made over each site's rows)."""
    base = cfg.train.model_dump()
    per_round = cfg.train.local_epochs if cfg.train.local_steps == 0 else 1
    base.update(local_steps=0, local_epochs=epochs or max(cfg.study.rounds * per_round, 1))
    return TrainConfig(**base)


def audit_run(run_dir: str | Path, settings: AuditSettings | None = None, *,
              progress: ShadowProgress | None = None, write: bool = True) -> AuditResult:
    """Run a membership-inference audit on a simulation's output folder.

    Writes ``audit/privacy-<attack>-<site>.{json,png,html}`` into the run folder (unless
    ``write=False``); the ``.html`` is a self-contained fragment for the study report.
    """
    from fedcare.engine.learner_factory import ModelShape, make_learner

    settings = settings or AuditSettings()
    run = load_run(run_dir)
    cfg = run.config
    data = candidates_of(cfg, settings.site, history=run.history,
                         site_data=settings.site_data)
    shape = ModelShape(tuple(data.x.shape[1:]), data.task, data.num_classes)
    learner = make_learner(cfg, shape)
    try:
        learner.initial_parameters().spec.validate(run.parameters, what="the run's model")
    except ValidationError as exc:
        raise ConfigError(f"{run.path / 'model.safetensors'} does not fit the model its "
                          f"config describes: {exc.message}") from exc

    def make_shadow(seed: int) -> Learner:
        study = cfg.study.model_copy(update={"seed": seed})
        return make_learner(cfg.model_copy(update={"study": study}), shape)

    scores = attack(learner, run.parameters, data, settings, make_shadow=make_shadow,
                    train=shadow_recipe(cfg, settings.epochs), progress=progress)
    result = evaluate_attack(data, scores, settings,
                             study_privacy(run.history, settings.site))
    if write:
        write_outputs(result, run.path / "audit")
    return result


def write_outputs(result: AuditResult, folder: Path) -> dict[str, Path]:
    """JSON, PNG and HTML fragment of one audit; returns their paths."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", result.site).strip("-") or "site"
    stem = folder / f"privacy-{result.attack}-{slug}"
    png = roc_png(result.roc_fpr, result.roc_tpr,
                  f"{result.attack} attack on {result.site}: AUC {result.auc:.3f}")
    doc = result.to_dict()
    paths = {"json": stem.with_suffix(".json"), "png": stem.with_suffix(".png"),
             "html": stem.with_suffix(".html")}
    atomic_write(paths["json"], json.dumps(doc, indent=2).encode())
    atomic_write(paths["png"], png)
    atomic_write(paths["html"], html_fragment(doc, png).encode())
    return paths
