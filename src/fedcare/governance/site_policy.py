"""The site's own rules for which studies it joins and what may leave it.

Why: a hospital's data steward, not the federation's coordinator, decides what the site's data
may be used for (NVIDIA FLARE's site-owned ``authorization.json`` and privacy filters, but deny
by default). The policy is a TOML file on the site's machine that the hub can never set or
see; the node checks every study against it before approving (:func:`check_study`) and every
reply before it leaves (:func:`check_task`). Each check returns the list of
:class:`Violation` - empty means allowed - each naming the rule, what the study asks and what
the site allows, so a steward knows exactly what to change or to refuse.

Fail closed everywhere:

* a missing policy file is an error (:func:`load_policy`), never "no rules"; a key the file
  leaves out takes the STRICT default (:func:`default_policy`), never a lax one;
* a study whose epsilon is not stated (it gives a noise multiplier only), a site whose class
  counts are unknown, a task kind or metric the policy does not name: all refused.

The strict default (also ``examples/site_policy.toml``, every key documented there) allows
FedAvg and FedProx with the logreg, mlp and cnn models, no custom model code, at most 100
rounds, at least 100 rows and 20 per class at the site, and requires DP (DP-SGD, or DP-FedAvg
with the noise added at the sites) with epsilon at most 3 per study and 10 in total at delta
at most 1e-5, under secure aggregation (secagg, secagg+ or CKKS). Only the final evaluation
metrics may leave (no per-site training loss curves). So a typical plain study - FedAvg,
logreg, no ``[privacy]``, no ``[secure_aggregation]`` - is refused twice: ``require_dp``
and ``secure_aggregation.required``.

Epsilon: a study's epsilon is its training ``target_epsilon`` plus, when it standardizes,
the ``stats_epsilon`` of its feature statistics; their sum bounds what any accountant reports
for the pair (basic composition), so the check is conservative. The site's total is checked
as the spent epsilon (the site's privacy ledger) plus the study's.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from fedcare.core.errors import ConfigError, ValidationError
from fedcare.core.settings import Section, load_toml

MAX_POLICY_ROUNDS = 100_000
MAX_POLICY_EPSILON = 1_000.0
MAX_POLICY_ROWS = 10**9

_NAME = r"^[a-z0-9_+.-]{1,64}$"
#: Metric names as the learners and the executor spell them (``rows_dropped/missing label``
#: holds a slash and a space).
_METRIC = r"^[A-Za-z0-9_.:/ -]{1,64}$"

SecAggProtocol = Literal["secagg", "secagg+", "ckks"]
Mechanism = Literal["dp_sgd", "dp_fedavg_central", "dp_fedavg_distributed"]


# --- the policy file ---------------------------------------------------------------------
class StudyRules(Section):
    strategies: list[str] = Field(["fedavg", "fedprox"], max_length=100, description=(
        "Strategies (study strategy.name) this site trains under; [] refuses every study."))
    models: list[str] = Field(["logreg", "mlp", "cnn"], max_length=100, description=(
        "Built-in models (study model.name) this site trains."))
    custom_code: bool = Field(False, description=(
        "Whether a study may bring its own model code (run in the sandbox)."))
    max_rounds: int = Field(100, ge=1, le=MAX_POLICY_ROUNDS, description=(
        "The most federated rounds a study may ask (each round releases an update)."))

    @model_validator(mode="after")
    def _names(self) -> StudyRules:
        import re

        for key in ("strategies", "models"):
            for name in getattr(self, key):
                if not re.fullmatch(_NAME, name):
                    raise ValueError(f"{key}: {name!r} is not a strategy or model name")
        return self


class CohortRules(Section):
    min_rows: int = Field(100, ge=1, le=MAX_POLICY_ROWS, description=(
        "Fewest rows of this site's dataset a study may use."))
    min_per_class: int = Field(20, ge=0, le=MAX_POLICY_ROWS, description=(
        "Fewest rows of each class (classification studies); 0 turns the rule off."))


class PrivacyRules(Section):
    require_dp: bool = Field(True, description="Refuse studies without differential privacy.")
    mechanisms: list[Mechanism] = Field(["dp_sgd", "dp_fedavg_distributed"], max_length=3,
                                        description=(
        "DP mechanisms allowed (dp_fedavg_central: the hub adds the noise, so the site's "
        "update reaches the hub un-noised; not allowed by default)."))
    max_epsilon_per_study: float = Field(3.0, ge=0, le=MAX_POLICY_EPSILON, allow_inf_nan=False,
                                         description="Largest epsilon one study may spend.")
    max_epsilon_total: float = Field(10.0, ge=0, le=MAX_POLICY_EPSILON, allow_inf_nan=False,
                                     description=(
        "Largest epsilon all studies together may spend at this site."))
    max_delta: float = Field(1e-5, gt=0, lt=1, allow_inf_nan=False,
                             description="Largest delta of a study's (epsilon, delta).")

    @model_validator(mode="after")
    def _per_study_within_total(self) -> PrivacyRules:
        if self.max_epsilon_per_study > self.max_epsilon_total:
            raise ValueError(f"max_epsilon_per_study ({self.max_epsilon_per_study}) is more "
                             f"than max_epsilon_total ({self.max_epsilon_total})")
        return self


class SecureAggregationRules(Section):
    required: bool = Field(True, description=(
        "Refuse studies whose updates the hub would see one by one."))
    protocols: list[SecAggProtocol] = Field(["secagg", "secagg+", "ckks"], max_length=3,
                                      description="Secure aggregation protocols allowed.")


_EVAL = ["accuracy", "auc", "balanced_accuracy", "f1", "brier", "rmse"]
#: What a DP-SGD fit reply states for the hub's privacy accounting (the names of
#: ``fedcare.core.learning.DpSgdFacts``): sample rate, noise multiplier, clip norm.
_DP_FACTS = ["dp_clip", "dp_noise_multiplier", "dp_sample_rate"]


class ReleaseRules(Section):
    """Per task kind, the metric names a reply may carry out of the site; [] = none."""

    fit: list[str] = Field(["steps", *_DP_FACTS], max_length=200, description=(
        "Metrics a training reply may carry (train_loss, a per-site loss curve, is not "
        "allowed by default; the DP-SGD accounting facts are, or the federation could not "
        "account the epsilon this site spends)."))
    evaluate: list[str] = Field(_EVAL, max_length=200,
                                description="Metrics an evaluation reply may carry.")
    local_baseline: list[str] = Field(_EVAL, max_length=200, description=(
        "Metrics of the site's local-only baseline."))
    stats: list[str] = Field([], max_length=200, description=(
        "Metrics a feature-statistics reply may carry."))
    sa_share: list[str] = Field([], max_length=200, description="Secure aggregation: shares.")
    sa_mask: list[str] = Field([], max_length=200, description="Secure aggregation: masks.")
    sa_unmask: list[str] = Field([], max_length=200, description="Secure aggregation: unmask.")
    he_decrypt: list[str] = Field([], max_length=200, description="CKKS: decryption shares.")

    @model_validator(mode="after")
    def _names(self) -> ReleaseRules:
        import re

        for kind, names in self:
            for name in names:
                if not re.fullmatch(_METRIC, name):
                    raise ValueError(f"{kind}: {name!r} is not a metric name")
        return self


class SitePolicy(Section):
    """The whole policy file; every key defaults to the strict value."""

    studies: StudyRules = Field(default_factory=StudyRules)
    cohort: CohortRules = Field(default_factory=CohortRules)
    privacy: PrivacyRules = Field(default_factory=PrivacyRules)
    secure_aggregation: SecureAggregationRules = Field(default_factory=SecureAggregationRules)
    release: ReleaseRules = Field(default_factory=ReleaseRules)


def default_policy() -> SitePolicy:
    """The strict policy a site gets for every key its file does not set (module docstring)."""
    return SitePolicy()


def policy_toml(policy: SitePolicy, *, header: str = "") -> str:
    """``policy`` as a TOML file that states every key, each under its description as a
    comment (``fedcare node policy init`` writes the strict default this way, and the demo its
    own): a steward reads what each rule means where it is set, and no key is left to a
    default. ``load_policy`` reads it back as ``policy``."""
    import json
    import textwrap

    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for name, section in policy:
        if lines:
            lines.append("")
        lines.append(f"[{name}]")
        for key, field in type(section).model_fields.items():
            lines += [f"# {line}" for line in textwrap.wrap(field.description or "", 88)]
            value = getattr(section, key)
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, (int, float)):
                text = repr(value)
            else:
                text = json.dumps(list(value))
            lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def load_policy(path: Path) -> SitePolicy:
    """Read the site's policy file. A missing or invalid file raises
    :class:`~fedcare.core.errors.ConfigError` (one line per problem, naming the key): the
    caller must then refuse every study - there is no "no policy" that allows anything."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"site policy {path} does not exist; create it (see "
                          "examples/site_policy.toml) - without it the site refuses every "
                          "study", source=str(path))
    policy: SitePolicy = load_toml(path, SitePolicy, what="site policy")
    return policy


# --- what is checked -----------------------------------------------------------------------
@dataclass(frozen=True)
class StudyRequest:
    """What a study asks of a site, in the terms of the policy. Built from a
    :class:`fedcare.config.StudyConfig` by :meth:`from_config` (this package may not import
    it: the names below are its fields)."""

    strategy: str
    model: str
    rounds: int
    #: ``privacy.mode``: none, dp_sgd, dp_fedavg_central, dp_fedavg_distributed.
    privacy: str
    #: The epsilon the study states it spends in all (None: not stated).
    epsilon: float | None
    delta: float
    #: ``secure_aggregation.protocol``: none, secagg, secagg+, ckks.
    secure_aggregation: str
    #: ``data.task`` of a federation study: binary, multiclass, regression (None: unknown,
    #: checked as classification).
    task: str | None = None
    #: Whether the study brings its own model code (model ``custom``: its capabilities say
    #: backend ``custom``; :meth:`from_config` reads it, so a caller cannot forget it).
    custom_code: bool = False

    def __post_init__(self) -> None:
        texts = (self.strategy, self.model, self.privacy, self.secure_aggregation)
        if not all(isinstance(t, str) for t in texts) or type(self.rounds) is not int \
                or not isinstance(self.delta, (int, float)) or not isinstance(
                    self.custom_code, bool) or not (self.epsilon is None or isinstance(
                        self.epsilon, (int, float))):
            raise ValidationError(f"StudyRequest holds a value of the wrong type: {self!r}")

    @classmethod
    def from_config(cls, cfg: Any, *, epsilon: float | None = None,
                    custom_code: bool = False) -> StudyRequest:
        """The request of a validated ``StudyConfig``. ``epsilon``: the study's total epsilon
        as an accountant computed it (for studies that give a noise multiplier); otherwise
        ``target_epsilon`` (+ ``stats_epsilon`` when the data are standardized)."""
        privacy = cfg.privacy
        mode = str(privacy.mode)
        capabilities = getattr(cfg.model, "capabilities", None)
        custom_code = custom_code or getattr(capabilities, "backend", None) == "custom"
        if epsilon is None and mode != "none" and privacy.target_epsilon is not None:
            epsilon = float(privacy.target_epsilon)
            if getattr(cfg.data, "standardize", False):
                epsilon += float(privacy.stats_epsilon)
        return cls(strategy=str(cfg.strategy.name), model=str(cfg.model.name),
                   rounds=int(cfg.study.rounds), privacy=mode,
                   epsilon=None if mode == "none" else epsilon, delta=float(privacy.delta),
                   secure_aggregation=str(cfg.secure_aggregation.protocol),
                   task=getattr(cfg.data, "task", None), custom_code=custom_code)


@dataclass(frozen=True)
class SiteFacts:
    """What the site knows about itself, none of which leaves it."""

    #: Rows of the dataset the study would use.
    rows: int
    #: Rows per class (classification); None for a continuous label. Required: a site that
    #: does not know its class counts cannot pass a per-class minimum.
    class_counts: Mapping[str, int] | None
    #: Epsilon already spent at this site (its privacy ledger), all studies together.
    epsilon_spent: float = 0.0

    def __post_init__(self) -> None:
        counts = self.class_counts
        if type(self.rows) is not int or self.rows < 0 or (counts is not None and not all(
                isinstance(k, str) and type(n) is int and n >= 0 for k, n in counts.items())):
            raise ValidationError("SiteFacts: rows and class counts must be integers >= 0 "
                                  "(class counts by class name)")
        if isinstance(self.epsilon_spent, bool) or not isinstance(self.epsilon_spent,
                                                                  (int, float)):
            raise ValidationError("SiteFacts: epsilon_spent must be a number")


@dataclass(frozen=True)
class Violation:
    """One broken rule: which, what the study (or reply) has, what the site allows."""

    rule: str
    asked: str
    allowed: str
    message: str
    #: Whether ``message`` holds the site's own figures (row counts, spent budget): tell the
    #: hub :meth:`for_hub` instead.
    site_private: bool = False

    def __str__(self) -> str:
        return f"rule {self.rule}: {self.message}"

    def for_hub(self) -> str:
        """The refusal as the hub may see it: the rule, without the site's own figures."""
        if self.site_private:
            return f"rule {self.rule}: refused by the site's policy"
        return str(self)


def _v(rule: str, asked: object, allowed: object, message: str, *,
       private: bool = False) -> Violation:
    return Violation(rule, str(asked), str(allowed), message, private)


def _listing(values: Collection[str]) -> str:
    return ", ".join(sorted(values)) if values else "none"


def check_study(policy: SitePolicy, study: StudyRequest | Any,
                site: SiteFacts) -> list[Violation]:
    """Every rule of ``policy`` that ``study`` (a :class:`StudyRequest` or a ``StudyConfig``)
    breaks at this site, in the file's order; [] means the site may approve it."""
    if not isinstance(policy, SitePolicy):
        raise TypeError("check_study needs a SitePolicy (load_policy or default_policy)")
    if not isinstance(study, StudyRequest):
        study = StudyRequest.from_config(study)
    return (_study_rules(policy.studies, study) + _cohort_rules(policy.cohort, study, site)
            + _privacy_rules(policy.privacy, study, site)
            + _secagg_rules(policy.secure_aggregation, study))


def _study_rules(rules: StudyRules, study: StudyRequest) -> list[Violation]:
    out = []
    if study.strategy not in rules.strategies:
        out.append(_v("studies.strategies", study.strategy, _listing(rules.strategies),
                      f"the study uses strategy {study.strategy!r}, this site allows "
                      f"{_listing(rules.strategies)}"))
    if study.model not in rules.models:
        out.append(_v("studies.models", study.model, _listing(rules.models),
                      f"the study uses model {study.model!r}, this site allows "
                      f"{_listing(rules.models)}"))
    if study.custom_code and not rules.custom_code:
        out.append(_v("studies.custom_code", True, False,
                      "the study brings its own model code, this site allows built-in models "
                      "only"))
    if not study.rounds <= rules.max_rounds:
        out.append(_v("studies.max_rounds", study.rounds, rules.max_rounds,
                      f"the study asks {study.rounds} rounds, this site allows at most "
                      f"{rules.max_rounds}"))
    return out


def _cohort_rules(rules: CohortRules, study: StudyRequest, site: SiteFacts) -> list[Violation]:
    out = []
    if not site.rows >= rules.min_rows:
        out.append(_v("cohort.min_rows", site.rows, rules.min_rows,
                      f"the dataset has {site.rows} rows at this site, the study needs at "
                      f"least {rules.min_rows}", private=True))
    if rules.min_per_class == 0 or study.task == "regression":
        return out
    if site.class_counts is None or not site.class_counts:
        out.append(_v("cohort.min_per_class", "unknown", rules.min_per_class,
                      "the site's class counts are unknown, so the per-class minimum of "
                      f"{rules.min_per_class} cannot be checked"))
        return out
    small = sorted(c for c, n in site.class_counts.items() if not n >= rules.min_per_class)
    if small:
        fewest = min(site.class_counts[c] for c in small)
        out.append(_v("cohort.min_per_class", fewest, rules.min_per_class,
                      f"class {', '.join(map(repr, small))} has {fewest} rows at this site, "
                      f"each class needs at least {rules.min_per_class}", private=True))
    return out


def _privacy_rules(rules: PrivacyRules, study: StudyRequest,
                   site: SiteFacts) -> list[Violation]:
    if study.privacy == "none":
        if rules.require_dp:
            return [_v("privacy.require_dp", "none", _listing(rules.mechanisms),
                       "the study has no differential privacy (privacy.mode = none), this "
                       f"site requires one of {_listing(rules.mechanisms)}")]
        return []
    out = []
    if study.privacy not in rules.mechanisms:
        out.append(_v("privacy.mechanisms", study.privacy, _listing(rules.mechanisms),
                      f"the study uses {study.privacy}, this site allows "
                      f"{_listing(rules.mechanisms)}"))
    if not study.delta <= rules.max_delta:
        out.append(_v("privacy.max_delta", study.delta, rules.max_delta,
                      f"the study asks delta {study.delta:g}, this site allows at most "
                      f"{rules.max_delta:g}"))
    eps = study.epsilon
    if eps is None or not math.isfinite(eps) or eps < 0:
        out.append(_v("privacy.max_epsilon_per_study", "unstated",
                      rules.max_epsilon_per_study,
                      "the study states no epsilon (it gives a noise multiplier, not "
                      "privacy.target_epsilon), this site allows at most "
                      f"{rules.max_epsilon_per_study:g} and must know it before approving"))
        return out
    if not eps <= rules.max_epsilon_per_study:
        out.append(_v("privacy.max_epsilon_per_study", eps, rules.max_epsilon_per_study,
                      f"the study asks epsilon {eps:g}, this site allows at most "
                      f"{rules.max_epsilon_per_study:g}"))
    spent = site.epsilon_spent
    if not (math.isfinite(spent) and spent >= 0 and spent + eps <= rules.max_epsilon_total):
        left = max(0.0, rules.max_epsilon_total - spent) if math.isfinite(spent) else 0.0
        out.append(_v("privacy.max_epsilon_total", eps, left,
                      f"the study asks epsilon {eps:g}, this site has {left:g} left of its "
                      f"total {rules.max_epsilon_total:g} ({spent:g} spent)", private=True))
    return out


def _secagg_rules(rules: SecureAggregationRules, study: StudyRequest) -> list[Violation]:
    protocol = study.secure_aggregation
    if protocol == "none":
        if rules.required:
            return [_v("secure_aggregation.required", "none", _listing(rules.protocols),
                       "the study has no secure aggregation (the hub would see this site's "
                       f"update), this site requires one of {_listing(rules.protocols)}")]
        return []
    if protocol not in rules.protocols:
        return [_v("secure_aggregation.protocols", protocol, _listing(rules.protocols),
                   f"the study uses {protocol}, this site allows "
                   f"{_listing(rules.protocols)}")]
    return []


def check_task(policy: SitePolicy, task_kind: str,
               metrics_keys: Collection[str]) -> list[Violation]:
    """Every metric of a reply to a ``task_kind`` task (a
    :class:`fedcare.core.messages.TaskKind` value) that may not leave this site; a task kind
    the policy does not name may release nothing and is refused itself."""
    if not isinstance(policy, SitePolicy):
        raise TypeError("check_task needs a SitePolicy (load_policy or default_policy)")
    kind = str(task_kind)
    if kind not in ReleaseRules.model_fields:
        return [_v("release", kind, _listing(ReleaseRules.model_fields),
                   f"task kind {kind!r} is not one this site's policy knows: nothing of it "
                   "may leave")]
    allowed: list[str] = getattr(policy.release, kind)
    return [_v(f"release.{kind}", key, _listing(allowed),
               f"metric {key!r} may not leave this site in a {kind} reply (allowed: "
               f"{_listing(allowed)})") for key in sorted(set(metrics_keys))
            if key not in allowed]
