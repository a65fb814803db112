"""What a study produced, round by round: the contents of ``history.json``."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedcare.core.files import atomic_write

Metrics = dict[str, float]


@dataclass
class RoundRecord:
    """One round. ``site_metrics``/``global_metrics`` evaluate the model produced BY this round."""

    round: int
    seconds: float = 0.0
    train_seconds: float = 0.0
    aggregate_seconds: float = 0.0
    bytes_down: int = 0
    bytes_up: int = 0
    sites_sampled: list[str] = field(default_factory=list)
    sites_completed: list[str] = field(default_factory=list)
    sites_failed: dict[str, str] = field(default_factory=dict)
    #: Sites whose update counted but looked wrong, and why: a claimed example count above
    #: what the site declared (capped), an update far from the round's others (audit F3).
    sites_flagged: dict[str, str] = field(default_factory=dict)
    train_metrics: dict[str, Metrics] = field(default_factory=dict)
    site_metrics: dict[str, Metrics] = field(default_factory=dict)
    global_metrics: Metrics = field(default_factory=dict)
    #: Differential privacy: cumulative epsilon of the model after this round (None without
    #: DP; "inf" when a round had no noise).
    epsilon: float | str | None = None


def weighted_mean_metrics(per_site: Mapping[str, Mapping[str, float]],
                          weights: Mapping[str, int]) -> Metrics:
    """Example-weighted mean of each metric over the sites that report it."""
    out: Metrics = {}
    names = sorted({m for metrics in per_site.values() for m in metrics})
    for name in names:
        pairs = [(metrics[name], weights.get(site, 0)) for site, metrics in per_site.items()
                 if name in metrics]
        total = sum(w for _, w in pairs)
        if total > 0:
            out[name] = float(sum(v * w for v, w in pairs) / total)
    return out


@dataclass
class History:
    """Everything about a run except the arrays. ``final_parameters`` is kept beside it."""

    study: str
    meta: dict[str, Any] = field(default_factory=dict)
    sites: list[dict[str, Any]] = field(default_factory=list)
    initial: dict[str, Any] = field(default_factory=dict)
    rounds: list[RoundRecord] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    baselines: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    final_parameters: Mapping[str, np.ndarray] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"study": self.study, **self.meta, "sites": self.sites,
                             "initial": self.initial,
                             "rounds": [asdict(r) for r in self.rounds],
                             "final": self.final, "baselines": self.baselines,
                             "timing": self.timing}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> History:
        known = {"study", "sites", "initial", "rounds", "final", "baselines", "timing"}
        return cls(study=d["study"], meta={k: v for k, v in d.items() if k not in known},
                   sites=list(d.get("sites", [])), initial=dict(d.get("initial", {})),
                   rounds=[RoundRecord(**r) for r in d.get("rounds", [])],
                   final=dict(d.get("final", {})), baselines=dict(d.get("baselines", {})),
                   timing=dict(d.get("timing", {})))

    def metric_curve(self, metric: str) -> list[tuple[int, float]]:
        """(round, global metric) for every evaluated round - handy in notebooks."""
        return [(r.round, r.global_metrics[metric]) for r in self.rounds
                if metric in r.global_metrics]


def timestamp(at: dt.datetime | None = None) -> str:
    """When a run was created, as ``history.json`` and the report's "Created" show it (UTC,
    ISO 8601, seconds): the simulation's run and the hub's study write the same field."""
    return (at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).isoformat(timespec="seconds")


def set_timing(history: History, total_seconds: float) -> None:
    """The run's timing block (the report's "Total time"), the same for a simulation (its
    wall time) and a networked study (from its submission to its end)."""
    secs = [r.seconds for r in history.rounds]
    history.timing = {"total_seconds": float(total_seconds),
                      "mean_round_seconds": sum(secs) / len(secs) if secs else 0.0}


def save_history(history: History, path: Path) -> None:
    atomic_write(path, json.dumps(history.to_dict(), indent=2).encode())
