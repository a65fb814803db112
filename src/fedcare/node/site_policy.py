"""The site's policy file as a node applies it: loaded at start, re-read when it changes,
fail closed when it is missing.

Why a module of its own: the agent's ``study()`` holds the approval check too; the policy's
part is one call there (:meth:`NodePolicy.refusal`) and one per task (:meth:`NodePolicy.gate`
and :meth:`NodePolicy.recheck`), the checks themselves being the ones simulation runs
(:mod:`fedcare.engine.site_policy`).

* A file that does not parse or breaks the schema stops the node at start (the error names
  the key); edited into one while the node runs, every task is refused until it is fixed.
* No ``[policy]`` in site.toml, or a file that does not exist: every study is refused, with
  the reason saying which file is missing and how to create it.
* The file is re-read when its modification time or size changes, so a steward's edit
  applies at the next task without a restart: a study the new policy refuses gets no further
  task; one the old policy refused is loaded again and checked.
* The researcher is told each broken rule without the site's figures (row counts, spent
  epsilon); the site's log and its audit trail (``policy_refused``) keep the full text.
* Epsilon: a study is checked against the site's ledger (its own earlier charges left out)
  plus the epsilon every other admitted study of this node asked; a site without a privacy
  ledger, or whose ledger cannot be read, cannot check a DP study's total and refuses it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcare.config import StudyConfig
from fedcare.core.dataset import SiteData
from fedcare.core.errors import ConfigError, FedcareError
from fedcare.core.messages import Task
from fedcare.engine.site_policy import ReleaseGate, site_facts, study_refusal, study_request
from fedcare.governance.site_policy import (
    SiteFacts,
    SitePolicy,
    StudyRequest,
    Violation,
    load_policy,
)
from fedcare.node.audit import NodeAudit

log = logging.getLogger("fedcare.node")

POLICY_INIT = "fedcare node policy init --out site_policy.toml"


class PolicyUnavailable(FedcareError):
    """The site has no readable policy now: every study is refused."""


@dataclass
class _Admitted:
    request: StudyRequest
    digest: str
    facts: SiteFacts
    #: The policy version this study was last checked under, and the outcome.
    stamp: object
    refusal: str | None
    epsilon: float


class NodePolicy:
    """The policy at ``path`` (None: site.toml names none) of site ``site``."""

    def __init__(self, path: Path | None, site: str, data_config: Path,
                 audit: NodeAudit) -> None:
        self.path = path
        self.site = site
        self.data_config = Path(data_config)
        self.audit = audit
        self._policy: SitePolicy | None = None
        self._stamp: object = None
        self._problem: str | None = None
        self._studies: dict[str, _Admitted] = {}
        if path is None:
            self._problem = (f"{self.data_config} names no site policy: add [policy] file = "
                             f"\"site_policy.toml\" and create that file (`{POLICY_INIT}` "
                             "writes the strict default)")
        elif path.is_file():
            self._policy = load_policy(path)  # an invalid file stops the node here
            self._stamp = _stamp(path)
        if self._problem is None and self._policy is None:
            self._problem = (f"site policy {path} does not exist; create it (`{POLICY_INIT}` "
                             "writes the strict default)")
        if self._problem is not None:
            log.error("site %s refuses every study: %s", site, self._problem)

    # -- the current policy ---------------------------------------------------------------
    def stamp(self) -> object:
        """The policy's version now (re-read first when the file changed)."""
        self._reload()
        return self._stamp

    def _reload(self) -> None:
        if self.path is None:
            return
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self._policy, self._problem = load_policy(self.path), None
            log.info("site %s: site policy %s re-read", self.site, self.path)
        except ConfigError as exc:
            self._policy = None
            self._problem = (f"site policy {self.path} cannot be read, so this site refuses "
                             f"every study until it is fixed: {exc}")
            log.error("%s", self._problem)

    def current(self) -> SitePolicy:
        """The policy now; :class:`PolicyUnavailable` when there is none to apply."""
        self._reload()
        if self._policy is None:
            raise PolicyUnavailable(self._problem or "no site policy")
        return self._policy

    def gate(self) -> ReleaseGate:
        """The per-task rules for a study's executor (always the current policy)."""
        return ReleaseGate(self.current, on_withheld=self._withheld)

    def _withheld(self, task: Task, violations: list[Violation]) -> None:
        self.audit.metrics_withheld(task.task_id, [v.asked for v in violations])

    # -- studies --------------------------------------------------------------------------
    def refusal(self, study_id: str, cfg: StudyConfig, digest: str, data: SiteData,
                n_sites: int, ledger: Any) -> str | None:
        """Why the policy refuses study ``study_id`` (over ``n_sites`` sites) at this site
        (the text the hub gets), or None; a refusal is logged in full and written to the
        site's audit trail."""
        facts = site_facts(data, 0.0)
        try:
            request = study_request(cfg, len(data.y_train), n_sites)
        except FedcareError as exc:  # the epsilon cannot be computed: refuse, never guess
            log.error("study %s: its epsilon cannot be computed: %s", study_id, exc)
            request = StudyRequest.from_config(cfg)
        asked = _asked_epsilon(request)
        entry = _Admitted(request, digest, facts, None, None, asked)
        self._studies[study_id] = entry
        return self._check(study_id, entry, ledger)

    def recheck(self, study_id: str, ledger: Any) -> str | None:
        """The study's refusal under the current policy: checked again only when the policy
        changed since its last check."""
        entry = self._studies.get(study_id)
        if entry is None:
            return None
        if entry.stamp == self.stamp():
            return entry.refusal
        return self._check(study_id, entry, ledger)

    def stale(self, study_id: str) -> bool:
        """Whether a study this policy refused was refused under an older version of it
        (the agent then loads it again)."""
        entry = self._studies.get(study_id)
        return entry is not None and entry.refusal is not None and entry.stamp != self.stamp()

    def _check(self, study_id: str, entry: _Admitted, ledger: Any) -> str | None:
        entry.stamp = self.stamp()
        try:
            policy = self.current()
        except PolicyUnavailable as exc:
            full = hub = f"site {self.site} has no usable site policy: {exc.message}"
            rules = ["policy.file"]
        else:
            facts = SiteFacts(entry.facts.rows, entry.facts.class_counts,
                              self._spent(study_id, entry, ledger))
            refused = study_refusal(policy, entry.request, facts, self.site)
            if refused is None:
                entry.refusal = None
                return None
            full, hub, rules = refused.full, refused.for_hub, refused.rules
            if ledger is None and "privacy.max_epsilon_total" in rules:
                full += (" (this site keeps no privacy ledger - [privacy] policy in its "
                         "site.toml - so the epsilon its studies spend cannot be counted)")
        entry.refusal = hub
        log.warning("study %s: %s", study_id, full)
        self.audit.policy_refused(study_id, entry.digest, rules, full)
        return hub

    def _spent(self, study_id: str, entry: _Admitted, ledger: Any) -> float:
        """The epsilon the site counts as spent for this study's check: its ledger without
        the studies this node admitted, plus what those asked (unknown: infinite)."""
        if entry.request.privacy == "none":
            return 0.0  # the budget rules do not apply to a study without DP
        if ledger is None:
            return math.inf
        others = {sid: e for sid, e in self._studies.items()
                  if sid != study_id and e.refusal is None and e.stamp is not None}
        try:
            spent = float(ledger.spent(exclude={study_id, *others}).epsilon)
        except Exception as exc:  # noqa: BLE001 (a broken ledger: refuse, never guess)
            log.error("privacy ledger cannot be read for the site policy's budget: %s", exc)
            return math.inf
        return spent + sum(e.epsilon for e in others.values())


def _asked_epsilon(request: StudyRequest) -> float:
    if request.privacy == "none":
        return 0.0
    return request.epsilon if request.epsilon is not None else math.inf


def _stamp(path: Path) -> object:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
