"""Site quality report: what a site may share about its data, and whether it may train.

The report is built at the site and is safe to send to the hub: counts only, every count below
``min_cell`` replaced by ``"<min_cell>"`` (threshold suppression, the rule of statistical
disclosure control for frequency tables; Hundepool et al., *Statistical Disclosure Control*,
Wiley 2012, ch. 5), with *secondary* suppression inside each partition that sums to a shown
total (histogram bins + missing, label classes): when exactly one cell of such a partition is
suppressed, the next smallest is suppressed too, so the hidden one cannot be recovered by
subtraction. Values appear only as counts in fixed bins taken from the contract's range -- no
raw minimum, maximum, mean or row.

:func:`passes_minimum_quality` evaluates the contract's ``[quality]`` rules on the site-side
feature table and returns the violations (the node refuses to train while any remain).
"""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fedcare.data.contract import (
    AgeFeature,
    Contract,
    MeasurementFeature,
    PresenceFeature,
    SexFeature,
    coded_sets,
)
from fedcare.data.features import FeatureTable, build_features

if TYPE_CHECKING:
    from fedcare.data.adapters.canonical import CanonicalRecords
    from fedcare.data.harmonize.codes import SiteMapping

REPORT_SCHEMA = 1
HIST_BINS = 10
Cell = int | str
SECONDARY = "suppressed"


def suppress(n: int, min_cell: int) -> Cell:
    """``n`` if it is at least ``min_cell``, else ``"<min_cell>"`` (zeros included)."""
    return int(n) if n >= min_cell else f"<{min_cell}"


def suppress_partition(counts: Sequence[int], min_cell: int) -> list[Cell]:
    """Threshold-suppress cells that sum to a published total, then suppress the smallest
    remaining cell when exactly one was hidden (otherwise total - shown = the hidden one)."""
    cells: list[Cell] = [suppress(c, min_cell) for c in counts]
    hidden = [i for i, c in enumerate(cells) if isinstance(c, str)]
    if len(hidden) == 1 and len(cells) > 1:
        shown = [i for i, c in enumerate(cells) if not isinstance(c, str)]
        j = min(shown, key=lambda i: counts[i])
        cells[j] = SECONDARY
    return cells


def bin_edges(lo: float, hi: float, bins: int = HIST_BINS) -> list[float]:
    return [float(x) for x in np.linspace(lo, hi, bins + 1)]


def quality_report(contract: Contract, data: FeatureTable | CanonicalRecords, *,
                   min_cell: int = 10, site: str | None = None,
                   site_mapping: SiteMapping | None = None) -> dict[str, Any]:
    """A JSON-safe, disclosure-controlled summary of one site's data against ``contract``."""
    if min_cell < 1:
        raise ValueError("min_cell must be >= 1")
    table = data if isinstance(data, FeatureTable) else build_features(
        contract, data, site_mapping=site_mapping)
    s = lambda n: suppress(int(n), min_cell)  # noqa: E731
    rows = table.n_rows
    # persons = sum of every attrition step + cohort rows: one partition.
    steps = [n for _, n in table.attrition[1:]]
    attrition = [s(table.attrition[0][1]), *suppress_partition([*steps, rows], min_cell)]
    dropped = {step.removeprefix("missing "): c for (step, _), c in zip(
        table.attrition[1:], attrition[1:-1], strict=True) if step.startswith("missing ")}
    coverage = {name: {sys: s(table.coverage.get(name, Counter())[sys]) for sys in cs.systems()}
                for name, cs in coded_sets(contract).items()}
    site_systems = {sys for per_domain in table.site_systems.values() for sys in per_domain}
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "site": site,
        "contract": {"name": contract.name, "version": contract.version,
                     "hash": table.contract_hash},
        "min_cell": min_cell,
        "source_counts": {k: s(v) for k, v in sorted(table.source_counts.items())},
        "rejects": {k: s(v) for k, v in sorted(table.rejects.items())},
        "attrition": [{"step": step, "count": c} for (step, _), c in zip(
            table.attrition[1:], attrition[1:-1], strict=True)],
        "persons": attrition[0],
        "cohort_rows": attrition[-1],
        "features": {f.name: _feature_block(f, table, min_cell, dropped)
                     for f in contract.features},
        "label": _label_block(table, min_cell),
        "code_coverage": coverage,
        "coverage_gaps": coverage_gaps(contract, table),
        "systems_unused": [x for x in contract.systems() if x not in site_systems],
        "site_systems": {d: {k: s(v) for k, v in sorted(c.items())}
                         for d, c in sorted(table.site_systems.items())},
        "imputed_from": {k: how for k, (how, _) in sorted(table.imputed.items())},
    }
    violations = passes_minimum_quality(contract, table, min_cell=min_cell)
    report["violations"] = violations
    report["passes"] = not violations
    return report


def _feature_block(f: Any, table: FeatureTable, min_cell: int,
                   dropped: Mapping[str, Cell]) -> dict[str, Any]:
    s = lambda n: suppress(int(n), min_cell)  # noqa: E731
    block: dict[str, Any] = {"kind": f.kind, "source": f.source}
    if isinstance(f, (MeasurementFeature, AgeFeature)):
        col = table.observed.get(f.name)
        values = col.dropna().to_numpy(np.float64) if col is not None else np.array([])
        edges = bin_edges(*f.range)
        counts, _ = np.histogram(values, bins=edges)
        # The bins and the rows still missing (imputed later) partition the cohort; rows
        # dropped for a missing value are the attrition cell of the same name (same value).
        still_missing = int(col.isna().sum()) if col is not None else 0
        cells = suppress_partition([*counts.tolist(), still_missing], min_cell)
        block.update({
            "unit": f.unit,
            "missing": dropped.get(f.name, cells[-1]),
            "out_of_range": s(table.out_of_range.get(f.name, 0)),
            "histogram": {"edges": edges, "counts": cells[:-1]},
        })
        if isinstance(f, MeasurementFeature):
            block["units"] = {u: s(n) for u, n in sorted(table.units.get(f.name, {}).items())}
            block["unit_failures"] = {
                reason: {u: s(n) for u, n in sorted(per_unit.items())}
                for reason, per_unit in sorted(table.unit_failures.get(f.name, {}).items())}
            block["aggregation"] = f.aggregation.value
            block["window"] = f.window
    elif isinstance(f, (PresenceFeature, SexFeature)):
        cols = ([f"{f.name}_{c}" for c in f.categories]
                if isinstance(f, SexFeature) and f.kind == "categorical" else [f.name])
        for c in cols:
            ones = int(table.frame[c].sum()) if c in table.frame else 0
            cells = suppress_partition([table.n_rows - ones, ones], min_cell)
            block.setdefault("histogram", {})[c] = {"edges": [0, 1], "counts": cells}
    return block


def _label_block(table: FeatureTable, min_cell: int) -> dict[str, Any]:
    y = table.frame[table.label].to_numpy()
    pos = int((y == 1).sum())
    cells = suppress_partition([len(y) - pos, pos], min_cell)
    return {"name": table.label, "negative": cells[0], "positive": cells[1]}


def coverage_gaps(contract: Contract, table: FeatureTable) -> list[str]:
    """Coded features/label with no matching event at the site in any listed system."""
    return [name for name, cs in coded_sets(contract).items()
            if not name.startswith("exclude:")
            and sum(table.coverage.get(name, Counter())[sys] for sys in cs.systems()) == 0]


def passes_minimum_quality(contract: Contract, table: FeatureTable, *,
                           min_cell: int = 10) -> list[str]:
    """Violations of the contract's ``[quality]`` rules (empty list = may train).

    Messages never carry a count below ``min_cell`` (they may be shown off-site).
    """
    q = contract.quality
    out: list[str] = []
    shown = lambda n: str(n) if n >= min_cell else f"fewer than {min_cell}"  # noqa: E731
    rows = table.n_rows
    if rows < q.min_rows:
        out.append(f"cohort has {shown(rows)} rows; the contract needs at least {q.min_rows}")
    denom = _rows_before_missing(table)
    for f in contract.features:
        if not isinstance(f, (MeasurementFeature, AgeFeature)):
            continue
        limit = q.max_missing_by_feature.get(f.name, q.max_missing)
        miss = table.missing.get(f.name, 0)
        if denom and miss / denom > limit:
            out.append(f"feature {f.name!r}: {miss / denom:.0%} of cohort rows have no value "
                       f"(maximum {limit:.0%}); check its codes, units and window")
    if q.min_label_count:
        y = table.frame[table.label].to_numpy()
        for cls in (0, 1):
            n = int((y == cls).sum())
            if n < q.min_label_count:
                out.append(f"label {table.label!r} = {cls} in {shown(n)} rows; the contract needs "
                           f"at least {q.min_label_count} of each class")
    if q.require_code_coverage:
        for name in coverage_gaps(contract, table):
            systems = ", ".join(coded_sets(contract)[name].systems())
            out.append(f"{name!r}: no event at this site matches its codes ({systems}); the "
                       "site probably codes it in another system -- add a site mapping")
    return out


def _rows_before_missing(table: FeatureTable) -> int:
    """Cohort size when missingness was measured (before drop_row removed anyone)."""
    return len(table.observed) + sum(n for step, n in table.attrition
                                     if step.startswith("missing "))


# -- rendering --------------------------------------------------------------------------------


def to_json(report: Mapping[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=False)


def render_html(report: Mapping[str, Any]) -> str:
    """A single self-contained HTML page for the site's data steward."""
    e = html.escape
    c = report["contract"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Data quality: {e(str(report.get('site') or 'site'))}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
        "padding:.2em .6em;text-align:right}th{background:#f4f4f4}.bad{color:#b00}"
        ".ok{color:#070}</style></head><body>",
        f"<h1>Data quality — {e(str(report.get('site') or 'this site'))}</h1>",
        f"<p>Contract <b>{e(c['name'])}</b> v{e(c['version'])}, hash <code>{e(c['hash'])}"
        f"</code>; counts below {report['min_cell']} are suppressed.</p>",
    ]
    if report["violations"]:
        parts.append("<h2 class='bad'>Fails minimum quality</h2><ul>"
                     + "".join(f"<li>{e(v)}</li>" for v in report["violations"]) + "</ul>")
    else:
        parts.append("<h2 class='ok'>Passes minimum quality</h2>")
    parts.append(_table("Cohort attrition", ["step", "count"],
                        [[a["step"], a["count"]] for a in report["attrition"]]
                        + [["cohort rows", report["cohort_rows"]]]))
    parts.append(_table("Rejected source rows", ["reason", "count"],
                        [[k, v] for k, v in report["rejects"].items()]))
    feats = []
    for name, b in report["features"].items():
        if "missing" in b:
            feats.append([name, b.get("unit", ""), b["missing"], b["out_of_range"],
                          " ".join(f"{u}:{n}" for u, n in b.get("units", {}).items())])
    parts.append(_table("Numeric features", ["feature", "unit", "missing", "out of range",
                                             "units seen"], feats))
    lab = report["label"]
    parts.append(_table("Label", ["name", "0", "1"], [[lab["name"], lab["negative"],
                                                       lab["positive"]]]))
    parts.append(_table("Code coverage (matched events)", ["code set", "system", "events"],
                        [[n, sys, v] for n, per in report["code_coverage"].items()
                         for sys, v in per.items()]))
    if report["systems_unused"]:
        parts.append(f"<p>Contract systems with no event at this site: "
                     f"{e(', '.join(report['systems_unused']))}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _table(title: str, head: list[str], rows: list[list[Any]]) -> str:
    e = html.escape
    body = "".join("<tr>" + "".join(f"<td>{e(str(x))}</td>" for x in r) + "</tr>" for r in rows)
    return (f"<h2>{e(title)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head)
            + f"</tr>{body or '<tr><td colspan=9>none</td></tr>'}</table>")
