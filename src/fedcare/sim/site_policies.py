"""Site policies in simulation: each simulated site checks the study against its policy as a
node does (:mod:`fedcare.engine.site_policy`, the same functions and words), and keeps at
the site the metrics its policy does not release.

Why: a study that a hospital's policy would refuse should not look fine in simulation and
fail at the first real site. ``fedcare simulate --site-policy FILE`` gives every simulated
site one policy; ``--site-policy NAME=FILE`` one site its own (a named site's policy wins
over the one for all). A site without a policy here is unconstrained, as before: in
simulation the researcher holds every site's rows already.

A refused site is left out of the run (a warning names it and its reasons, and the
history's ``meta.site_policy`` records them); when fewer sites remain than the study needs
(``strategy.min_completed``, and two under secure aggregation) the run stops before
training with every site's reasons.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedcare.core.dataset import SiteData
from fedcare.core.errors import ConfigError
from fedcare.engine.site_policy import (
    PolicyRefusal,
    ReleaseGate,
    site_facts,
    study_refusal,
    study_request,
)
from fedcare.governance.site_policy import SitePolicy, load_policy

#: The key of a policy every simulated site without its own gets.
ALL_SITES = "*"


def parse_site_policy_options(values: Sequence[str]) -> dict[str, Path]:
    """``--site-policy`` values: ``FILE`` (every site) or ``NAME=FILE`` (one site)."""
    out: dict[str, Path] = {}
    for value in values:
        name, sep, file = value.partition("=")
        site, path = (name.strip(), file.strip()) if sep else (ALL_SITES, value.strip())
        if not site or not path:
            raise ConfigError(f"--site-policy {value!r}: give FILE (every site) or "
                              "NAME=FILE (one site)")
        if site in out:
            raise ConfigError(f"--site-policy: {'every site' if site == ALL_SITES else site}"
                              " is given two policies")
        out[site] = Path(path)
    return out


def load_site_policies(given: Mapping[str, SitePolicy | str | Path] | None
                       ) -> dict[str, SitePolicy]:
    """Each given policy loaded (a file that is missing or invalid is an error naming it)."""
    return {site: p if isinstance(p, SitePolicy) else load_policy(Path(p))
            for site, p in (given or {}).items()}


class SitePolicies:
    """The simulated sites' policies (by site name, :data:`ALL_SITES` for the rest)."""

    def __init__(self, policies: Mapping[str, SitePolicy]) -> None:
        self.policies = dict(policies)

    def of(self, site: str) -> SitePolicy | None:
        return self.policies.get(site, self.policies.get(ALL_SITES))

    def admitted(self, cfg: Any, sites: Sequence[SiteData]) -> tuple[list[SiteData],
                                                                    dict[str, str]]:
        """The sites whose policy admits ``cfg`` and each refused site's reason; raises
        :class:`ConfigError` when too few remain for the study (or a policy names a site the
        study does not have)."""
        names = {s.name for s in sites}
        unknown = sorted(set(self.policies) - names - {ALL_SITES})
        if unknown:
            raise ConfigError(f"--site-policy names {unknown}, which the study's data does not "
                              f"have (its sites: {', '.join(sorted(names))})")
        refused: dict[str, PolicyRefusal] = {}
        for s in sites:
            policy = self.of(s.name)
            if policy is None:
                continue
            refusal = study_refusal(policy, study_request(cfg, len(s.y_train), len(sites)),
                                    site_facts(s, 0.0), s.name)
            if refusal is not None:
                refused[s.name] = refusal
        kept = [s for s in sites if s.name not in refused]
        need = max(int(cfg.strategy.min_completed),
                   2 if cfg.secure_aggregation.protocol != "none" else 1)
        reasons = {name: r.for_hub for name, r in refused.items()}
        if len(kept) < need:
            raise ConfigError([f"the site policies leave {len(kept)} of {len(sites)} sites, "
                               f"the study needs {need}; nothing was trained:",
                               *reasons.values()])
        for reason in reasons.values():
            warnings.warn(f"{reason}; the run goes on without it", UserWarning, stacklevel=4)
        return kept, reasons

    def gate(self, site: str) -> ReleaseGate | None:
        policy = self.of(site)
        return ReleaseGate(policy) if policy is not None else None
