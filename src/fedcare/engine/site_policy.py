"""A site's policy (:mod:`fedcare.governance.site_policy`) applied where the site's half of a
study runs: the same code for a node and for a simulated site.

Why here: the node and ``fedcare simulate`` build the site's executor the same way
(:func:`fedcare.engine.study.site_executor`), so the study check (:func:`study_refusal`,
which needs the site's prepared rows) and the per-task release rules (:class:`ReleaseGate`,
which sees every reply before it leaves) live once, beside the executor, and a site refuses
the same study with the same words in both.

What a task's reply may carry: its ``metrics`` are checked against the policy's release list
for the task's kind, its ``eval_metrics`` (held-out metrics of a model) against ``evaluate``
- or ``local_baseline`` for a local-only baseline. A metric the policy does not list is
DROPPED from the reply (the reply still leaves: a metric is never needed to aggregate, and
refusing the task would cost the federation the round for a number it may do without); the
names dropped are recorded by the site (the node's audit log). A task of a round past the
policy's ``studies.max_rounds`` is refused outright.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fedcare.core.dataset import SiteData, TaskType
from fedcare.core.messages import Task, TaskKind, Update
from fedcare.governance.site_policy import (
    SiteFacts,
    SitePolicy,
    StudyRequest,
    Violation,
    check_study,
    check_task,
)

log = logging.getLogger("fedcare.node")

#: Task kinds that belong to one of the study's federated rounds (``studies.max_rounds``);
#: the feature statistics (round 0) and the local-only baseline (after the last round) do
#: not train the federation's model.
_ROUND_KINDS = frozenset({TaskKind.FIT, TaskKind.EVALUATE, TaskKind.SECAGG_SHARE,
                          TaskKind.SECAGG_MASK, TaskKind.SECAGG_UNMASK, TaskKind.HE_DECRYPT})


@dataclass(frozen=True)
class PolicyRefusal:
    """Why a site's policy refuses a study: every broken rule."""

    site: str
    violations: tuple[Violation, ...]

    @property
    def rules(self) -> list[str]:
        return [v.rule for v in self.violations]

    @property
    def for_hub(self) -> str:
        """What the researcher is told: each rule and what the study asks, never the site's
        own figures (its row counts, its spent budget)."""
        return (f"site {self.site} refuses the study under its site policy: "
                + "; ".join(v.for_hub() for v in self.violations))

    @property
    def full(self) -> str:
        """What the site's steward is told (its log and audit trail): with the figures."""
        return (f"site {self.site} refuses the study under its site policy: "
                + "; ".join(str(v) for v in self.violations))


def site_facts(data: SiteData, epsilon_spent: float) -> SiteFacts:
    """What the policy's cohort and budget rules need of a site: its rows (train and test),
    its rows per class id (a class the site lacks counts 0, so a per-class minimum fails
    for it instead of passing by omission) and the epsilon it has spent."""
    y = np.concatenate([np.asarray(data.y_train).ravel(), np.asarray(data.y_test).ravel()])
    counts: dict[str, int] | None = None
    if data.task is not TaskType.REGRESSION:
        ids = y.astype(np.int64)
        per = np.bincount(ids[ids >= 0], minlength=max(int(data.num_classes), 2))
        counts = {str(i): int(n) for i, n in enumerate(per)}
    return SiteFacts(rows=len(y), class_counts=counts, epsilon_spent=epsilon_spent)


def planned_epsilon(cfg: Any, rows: int, n_sites: int) -> float | None:
    """The epsilon a DP study that gives a noise multiplier (not ``target_epsilon``) spends
    at a site with ``rows`` training rows among ``n_sites``, as the site's ledger will charge
    it: the feature statistics once, then every round at the noise that protects the site's
    update from the hub - DP-SGD at its sampling rate and steps; distributed DP-FedAvg at
    the share a round's survivor threshold guarantees, for the smallest round it could be
    (the conservative case); central DP-FedAvg at the hub's noise. None: the study states
    its epsilon (``target_epsilon``) or has no DP."""
    p = cfg.privacy
    if p.mode == "none" or p.noise_multiplier is None:
        return None
    from fedcare.engine.assembly import privacy_spec
    from fedcare.engine.privacy import stats_noise_multiplier
    from fedcare.engine.study import study_train
    from fedcare.privacy.dp.accounting import (
        discrete_noise_multiplier,
        epsilon_of,
        sampled_gaussian_event,
    )

    spec = privacy_spec(cfg, rows, n_sites=n_sites)
    if spec is None or rows < 1:
        return None
    rounds = int(cfg.study.rounds)
    events = []
    stats = stats_noise_multiplier(cfg)
    if stats is not None:
        events.append(sampled_gaussian_event(stats, 1.0, 1))
    if p.mode == "dp_sgd":
        from fedcare.learners.torch_learner import dp_sgd_sample_rate, dp_sgd_steps

        train = study_train(cfg)
        events.append(sampled_gaussian_event(
            spec.noise_multiplier, dp_sgd_sample_rate(rows, train.batch_size),
            dp_sgd_steps(rows, train) * rounds))
    elif p.mode == "dp_fedavg_distributed":
        from fedcare.privacy.secagg.config import survivor_threshold

        sa = cfg.secure_aggregation
        z = min(discrete_noise_multiplier(
            spec.noise_multiplier, spec.clip, sa.frac_bits, shares=n,
            summed=survivor_threshold(n, sa.threshold, cfg.strategy.min_completed)
            if n > 1 else 1) for n in range(1, max(n_sites, 1) + 1))
        events.append(sampled_gaussian_event(z, 1.0, rounds))
    else:
        events.append(sampled_gaussian_event(spec.noise_multiplier, 1.0, rounds))
    return float(epsilon_of(events, spec.delta, spec.accountant))


def study_request(cfg: Any, rows: int, n_sites: int) -> StudyRequest:
    """What study ``cfg`` asks of a site with ``rows`` training rows among ``n_sites``, with
    its epsilon computed (:func:`planned_epsilon`) when it gives a noise multiplier."""
    return StudyRequest.from_config(cfg, epsilon=planned_epsilon(cfg, rows, n_sites))


def study_refusal(policy: SitePolicy, request: StudyRequest, facts: SiteFacts,
                  site: str) -> PolicyRefusal | None:
    """The refusal of ``request`` (:func:`study_request`) at ``site`` under ``policy``, or
    None when every rule admits it."""
    violations = check_study(policy, request, facts)
    return PolicyRefusal(site, tuple(violations)) if violations else None


#: Told what a site withheld from a reply (the task, the broken release rules).
WithheldFn = Callable[[Task, list[Violation]], None]


class _Fixed:
    """A policy that does not change (a simulated site's): picklable, unlike a closure, so a
    process pool can carry the executor."""

    def __init__(self, policy: SitePolicy) -> None:
        self.policy = policy

    def __call__(self) -> SitePolicy:
        return self.policy


class ReleaseGate:
    """The per-task half of a site's policy, applied by the site's executor to every task:
    :meth:`admit` before anything runs, :meth:`release` to every reply before it leaves.

    ``policy`` is the policy or a function returning the current one (a node re-reads its
    file when it changes, and a file that became invalid raises: the task is refused).
    ``on_withheld`` hears which metrics were dropped from which task's reply."""

    def __init__(self, policy: SitePolicy | Callable[[], SitePolicy], *,
                 on_withheld: WithheldFn | None = None) -> None:
        self._policy = _Fixed(policy) if isinstance(policy, SitePolicy) else policy
        self.on_withheld = on_withheld

    def admit(self, task: Task) -> None:
        """Refuse a task of a round past the policy's ``studies.max_rounds``."""
        from fedcare.engine.executor import Refused

        limit = self._policy().studies.max_rounds
        if task.kind in _ROUND_KINDS and task.round > limit:
            raise Refused(f"rule studies.max_rounds: the task is of round {task.round}, this "
                          f"site's policy allows at most {limit} rounds")

    def release(self, task: Task, update: Update) -> Update:
        """``update`` without the metrics the policy keeps at the site."""
        policy = self._policy()
        kind = task.kind.value
        eval_kind = "local_baseline" if task.kind is TaskKind.LOCAL_BASELINE else "evaluate"
        dropped = check_task(policy, kind, update.metrics.keys())
        dropped_eval = check_task(policy, eval_kind, update.eval_metrics.keys())
        if not dropped and not dropped_eval:
            return update
        names = {v.asked for v in dropped}
        eval_names = {v.asked for v in dropped_eval}
        withheld = [*dropped, *dropped_eval]
        log.info("task %s: the site policy keeps %s at the site", task.task_id,
                 ", ".join(sorted(names | eval_names)))
        if self.on_withheld is not None:
            self.on_withheld(task, withheld)
        return replace(update,
                       metrics={k: v for k, v in update.metrics.items() if k not in names},
                       eval_metrics={k: v for k, v in update.eval_metrics.items()
                                     if k not in eval_names},
                       provenance=(*update.provenance, "site_policy:metrics_withheld"))
