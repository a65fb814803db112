"""Compare sites' quality reports at the hub: distribution shift, label-rate outliers, coding
gaps and unit anomalies -- the usual reasons a federated model underperforms at one site.

Inputs are the suppressed reports of :func:`fedcare.data.quality.quality_report`; a suppressed
cell is never guessed. Each site is compared with the pooled *other* sites:

* **Population Stability Index** (Yurdakul, *Statistical properties of the population
  stability index*, 2018): ``PSI = sum (p - q) ln(p / q)`` over the coarse contract bins;
  < 0.1 stable, 0.1-0.25 moderate, > 0.25 a significant shift (the customary thresholds).
* **Jensen-Shannon divergence** (Lin, *Divergence measures based on the Shannon entropy*,
  IEEE Trans. Inf. Theory 1991), base 2, in [0, 1]: symmetric and finite on empty bins.

Both use only bins that are unsuppressed at the site *and* at every other site (renormalised
over those bins), so the comparison is exact where it exists and absent where it would need a
hidden count; fewer than two usable bins -> no verdict, and the finding says so.
Label rates are compared with a two-proportion z-test against the pooled other sites, and must
also be ``label_ratio``-fold away from the median site rate; a rate far from the others usually
means the outcome is coded differently (a site whose outcome codes are in a system the contract
does not list), not a sicker population -- hence it is reported as a likely definition
mismatch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fedcare.core.errors import DataError

PSI_EPS = 1e-4
OTHER_UNIT = "other"  # the quality report's bucket for units it does not name


@dataclass(frozen=True)
class Finding:
    kind: str  # "distribution_shift" | "label_rate" | "coverage" | "units" | "contract_hash"
    site: str | None
    subject: str
    message: str
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ShiftReport:
    sites: tuple[str, ...]
    findings: tuple[Finding, ...]
    divergence: dict[str, dict[str, dict[str, float]]]  # feature -> site -> {psi, js, bins}

    def to_dict(self) -> dict[str, Any]:
        return {"sites": list(self.sites), "findings": [asdict(f) for f in self.findings],
                "divergence": self.divergence}

    def of_kind(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]


def psi(p: Sequence[float], q: Sequence[float], eps: float = PSI_EPS) -> float:
    """Population stability index of two distributions over the same bins (eps-smoothed)."""
    a, b = _norm(p, eps), _norm(q, eps)
    return float(np.sum((a - b) * np.log(a / b)))


def js_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen-Shannon divergence, base 2 (0 = identical, 1 = disjoint supports)."""
    a, b = _norm(p, 0.0), _norm(q, 0.0)
    m = (a + b) / 2

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    return max(0.0, 0.5 * kl(a) + 0.5 * kl(b))


def _norm(x: Sequence[float], eps: float) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64)
    if v.ndim != 1 or v.size == 0 or np.any(v < 0) or not np.all(np.isfinite(v)):
        raise ValueError("a distribution must be a non-empty 1-d array of finite counts >= 0")
    total = v.sum()
    if total <= 0:
        raise ValueError("a distribution needs a positive total")
    v = v / total
    if eps:
        v = (v + eps) / (1 + eps * v.size)
    return v


def compare_reports(reports: Mapping[str, Mapping[str, Any]], *, psi_threshold: float = 0.25,
                    js_threshold: float = 0.1, label_z: float = 3.0,
                    label_ratio: float = 1.5) -> ShiftReport:
    """Findings across ``reports`` (site name -> quality report)."""
    if len(reports) < 2:
        raise DataError("comparing sites needs at least two site reports")
    sites = tuple(sorted(reports))
    findings: list[Finding] = []
    findings += _hash_mismatch(reports)
    divergence: dict[str, dict[str, dict[str, float]]] = {}
    for feature, per_site in _histograms(reports).items():
        divergence[feature] = {}
        for site in sites:
            if site not in per_site:
                continue
            others = [per_site[o] for o in sites if o != site and o in per_site]
            if not others:
                continue
            usable = [i for i, c in enumerate(per_site[site])
                      if isinstance(c, int) and all(isinstance(o[i], int) for o in others)]
            if len(usable) < 2:
                findings.append(Finding("distribution_shift", site, feature,
                                        f"{feature}: too few unsuppressed bins to compare "
                                        f"({len(usable)}); no verdict"))
                continue
            p = [per_site[site][i] for i in usable]
            q = [sum(o[i] for o in others) for i in usable]
            if sum(p) == 0 or sum(q) == 0:
                continue
            m = {"psi": psi(p, q), "js": js_divergence(p, q), "bins": float(len(usable))}
            divergence[feature][site] = m
            if m["psi"] > psi_threshold or m["js"] > js_threshold:
                findings.append(Finding(
                    "distribution_shift", site, feature,
                    f"{feature} at {site} differs from the other sites (PSI {m['psi']:.2f}, "
                    f"JS {m['js']:.3f} over {len(usable)} bins): check units, codes and case "
                    "mix", m))
    findings += _label_outliers(reports, sites, label_z, label_ratio)
    findings += _coverage(reports, sites)
    findings += _units(reports, sites)
    return ShiftReport(sites, tuple(findings), divergence)


def _hash_mismatch(reports: Mapping[str, Mapping[str, Any]]) -> list[Finding]:
    hashes = {s: r["contract"]["hash"] for s, r in reports.items()}
    if len(set(hashes.values())) <= 1:
        return []
    return [Finding("contract_hash", None, "contract",
                    f"sites used different contracts: {hashes}; reports are not comparable")]


def _histograms(reports: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, list[Any]]]:
    out: dict[str, dict[str, list[Any]]] = {}
    for site, rep in reports.items():
        for name, block in rep.get("features", {}).items():
            hist = block.get("histogram")
            if not hist:
                continue
            if "counts" in hist:
                out.setdefault(name, {})[site] = list(hist["counts"])
            else:  # binary / categorical: one 2-bin histogram per column
                for col, h in hist.items():
                    out.setdefault(col, {})[site] = list(h["counts"])
    return out


def _label_outliers(reports: Mapping[str, Mapping[str, Any]], sites: tuple[str, ...],
                    z_max: float, ratio: float) -> list[Finding]:
    counts = {}
    for s in sites:
        lab = reports[s].get("label", {})
        pos, neg = lab.get("positive"), lab.get("negative")
        if isinstance(pos, int) and isinstance(neg, int) and pos + neg > 0:
            counts[s] = (pos, pos + neg)
    findings: list[Finding] = []
    if len(counts) < 2:
        return findings
    # The reference for "far from the others" is the median site rate, so that one outlying
    # site does not make every other site look like an outlier against a pool it dominates.
    median = float(np.median([p / m for p, m in counts.values()]))
    for s, (pos, n) in counts.items():
        rest = [(p, m) for o, (p, m) in counts.items() if o != s]
        if not rest:
            continue
        rp, rn = sum(p for p, _ in rest), sum(m for _, m in rest)
        p1, p2 = pos / n, rp / rn
        pooled = (pos + rp) / (n + rn)
        se = math.sqrt(pooled * (1 - pooled) * (1 / n + 1 / rn)) if 0 < pooled < 1 else 0.0
        z = (p1 - p2) / se if se else 0.0
        r = (p1 / median) if median > 0 else math.inf
        if abs(z) > z_max and (r > ratio or r < 1 / ratio):
            findings.append(Finding(
                "label_rate", s, "label",
                f"label rate at {s} is {p1:.1%} vs {p2:.1%} elsewhere (z = {z:.1f}): likely a "
                "label-definition mismatch (outcome coded in a system or code the contract "
                "misses), else a different population", {"rate": p1, "others": p2, "z": z}))
    return findings


def _coverage(reports: Mapping[str, Mapping[str, Any]], sites: tuple[str, ...]) -> list[Finding]:
    findings = []
    unused_by = [set(reports[s].get("systems_unused", [])) for s in sites]
    for system in sorted(set.intersection(*unused_by)) if unused_by else []:
        findings.append(Finding("coverage", None, system,
                                f"the contract lists {system} codes but no site has {system} "
                                "events: drop them or ask sites to map them"))
    for s in sites:
        for name in reports[s].get("coverage_gaps", []):
            findings.append(Finding("coverage", s, name,
                                    f"{name}: no event at {s} matches the contract's codes; the "
                                    "site likely codes it in another system (site mapping)"))
    return findings


def _units(reports: Mapping[str, Mapping[str, Any]], sites: tuple[str, ...]) -> list[Finding]:
    findings = []
    for s in sites:
        for name, block in reports[s].get("features", {}).items():
            for reason, per_unit in block.get("unit_failures", {}).items():
                if not isinstance(per_unit, Mapping):
                    continue
                for unit, n in _safe_units(per_unit).items():
                    findings.append(Finding("units", s, name,
                                            f"{name} at {s}: {n} rows in unit {unit!r} "
                                            f"({reason}); values dropped"))
    return findings


def _safe_units(per_unit: Mapping[str, Any]) -> dict[str, Any]:
    """Unit -> count, repeating a unit's text only when it is a unit (pint parses it) or the
    site published its count as a number; any other text -- free text with a suppressed count,
    from a report built before sites folded such units, or by another tool -- is summed under
    "other" (counts stay suppressed when any part is)."""
    from fedcare.data.harmonize.units import unit_label

    out: dict[str, Any] = {}
    other: list[Any] = []
    for unit, n in per_unit.items():
        text = str(unit)
        if text in ("", OTHER_UNIT) or unit_label(text) is not None or (
                isinstance(n, int) and not isinstance(n, bool)):
            if text == OTHER_UNIT:
                other.append(n)
            else:
                out[text] = n
        else:
            other.append(n)
    if other:
        ints = [n for n in other if isinstance(n, int) and not isinstance(n, bool)]
        out[OTHER_UNIT] = sum(ints) if len(ints) == len(other) else next(
            (n for n in other if isinstance(n, str)), "suppressed")
    return out
