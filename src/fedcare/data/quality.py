"""Site quality report: what a site may share about its data, and whether it may train.

The report is built at the site and is safe to send to the hub: counts only, every count below
``min_cell`` replaced by ``"<min_cell>"`` (threshold suppression, the rule of statistical
disclosure control for frequency tables; Hundepool et al., *Statistical Disclosure Control*,
Wiley 2012, ch. 5), with *secondary* suppression inside each partition that sums to a shown
total (attrition steps + cohort, histogram bins + missing, label classes).

Secondary suppression assumes the reader knows the algorithm and the published total. When a
hidden cell is non-zero, the hidden cells of its partition must sum to at least ``min_cell`` or
be at least two non-zero cells, and must not all sit at ``min_cell - 1`` (two hidden cells
summing to 18 with ``min_cell`` 10 are both 9); otherwise the next-smallest shown cell is
suppressed too (:data:`SECONDARY`), until that holds. A cell that is zero *by construction*
(the still-missing cell of a ``drop_row`` feature, "no index date" under a fixed index date) is
left out of its partition: the reader knows it is zero, so counting it as hidden would protect
nothing. When a partition cannot be protected by its own cells (every cell hidden and still
determined), its total is suppressed instead. Values appear only as counts in fixed bins taken
from the contract's range -- no raw minimum, maximum, mean or row -- and unit strings only in
pint's canonical spelling, or as the site wrote them when at least ``min_cell`` persons have
them (else "other"): a free-text unit can carry a name.

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
from fedcare.data.features import ATTRITION_NO_INDEX, FeatureTable, build_features
from fedcare.data.harmonize.units import unit_label

if TYPE_CHECKING:
    from fedcare.data.adapters.canonical import CanonicalRecords
    from fedcare.data.harmonize.codes import SiteMapping

REPORT_SCHEMA = 1
HIST_BINS = 10
Cell = int | str
SECONDARY = "suppressed"
OTHER_UNIT = "other"


def suppress(n: int, min_cell: int) -> Cell:
    """``n`` if it is at least ``min_cell``, else ``"<min_cell>"`` (zeros included)."""
    return int(n) if n >= min_cell else f"<{min_cell}"


def suppress_partition(counts: Sequence[int], min_cell: int, *,
                       hide: Sequence[int] = ()) -> list[Cell]:
    """Threshold-suppress cells that sum to a published total, then suppress the next-smallest
    shown cell until the hidden ones are protected (see the module docstring). ``hide``:
    indices to suppress from the start (e.g. a total some other partition must keep hidden).
    """
    cells: list[Cell] = [suppress(c, min_cell) for c in counts]
    for i in hide:
        if not isinstance(cells[i], str):
            cells[i] = SECONDARY
    if min_cell <= 1:
        return cells  # nothing below 1 but 0, which "<1" already says
    while not _protected(counts, cells, min_cell):
        shown = [i for i, c in enumerate(cells) if not isinstance(c, str)]
        if not shown:
            break
        cells[min(shown, key=lambda i: (counts[i], i))] = SECONDARY
    return cells


def exposes_total(counts: Sequence[int], min_cell: int) -> bool:
    """True when :func:`suppress_partition` cannot protect ``counts`` by itself: publishing
    their total would determine a hidden cell, so the total must be suppressed."""
    return min_cell > 1 and not _protected(counts, suppress_partition(counts, min_cell),
                                           min_cell)


def _protected(counts: Sequence[int], cells: Sequence[Cell], min_cell: int) -> bool:
    hidden = [i for i, c in enumerate(cells) if isinstance(c, str)]
    if not hidden or any(cells[i] == SECONDARY for i in hidden):
        # a hidden cell known only to be >= min_cell absorbs any difference
        return True
    values = [int(counts[i]) for i in hidden]
    nonzero = sum(v > 0 for v in values)
    if nonzero == 0:
        return True  # nothing small to protect: the hidden cells are empty
    if sum(values) < min_cell and nonzero < 2:
        return False
    # Only "<min_cell" cells hidden: each lies in [0, min_cell - 1] and they sum to the
    # known rest, so all are determined exactly when all sit at min_cell - 1.
    return not all(v == min_cell - 1 for v in values)


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
    pub = _Published(contract, table, min_cell)
    attrition = [pub.persons, *pub.steps, pub.cohort_rows]
    dropped = {step.removeprefix("missing "): c for (step, _), c in zip(
        table.attrition[1:], pub.steps, strict=True) if step.startswith("missing ")}
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
        "features": {f.name: _feature_block(f, table, min_cell, dropped, pub)
                     for f in contract.features},
        "label": {"name": table.label, "negative": pub.label[0], "positive": pub.label[1]},
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


class _Published:
    """Every partitioned cell of a report, suppressed together: the partitions that sum to the
    cohort (histograms, 0/1 columns, label) first, because one that cannot protect itself
    forces the cohort size -- a cell of the attrition partition -- to be hidden."""

    def __init__(self, contract: Contract, table: FeatureTable, min_cell: int) -> None:
        parts = _cohort_partitions(contract, table)
        self.cells = {key: suppress_partition(counts, min_cell)
                      for key, counts in parts.items()}
        hide_rows = any(exposes_total(counts, min_cell) for counts in parts.values())
        # persons = every attrition step + cohort rows; a step that is zero by construction
        # is not a cell of the partition.
        steps = table.attrition[1:]
        fixed = contract.index.rule == "fixed_date"
        live = [i for i, (step, _) in enumerate(steps)
                if not (fixed and step == ATTRITION_NO_INDEX)]
        counts = [steps[i][1] for i in live] + [table.n_rows]
        cells = suppress_partition(counts, min_cell, hide=[len(counts) - 1] if hide_rows else [])
        self.steps: list[Cell] = [suppress(n, min_cell) for _, n in steps]
        for i, c in zip(live, cells[:-1], strict=True):
            self.steps[i] = c
        self.cohort_rows: Cell = cells[-1]
        total = int(table.attrition[0][1])
        exposed = min_cell > 1 and not _protected(counts, cells, min_cell)
        self.persons: Cell = (SECONDARY if exposed and total >= min_cell
                              else suppress(total, min_cell))
        self.label = self.cells["label"]


def _structurally_complete(contract: Contract, f: MeasurementFeature | AgeFeature) -> bool:
    """No row of the cohort can miss ``f``: dropped (drop_row), required, or a count."""
    return (f.missing.kind == "drop_row" or f.name in contract.cohort.require
            or (isinstance(f, MeasurementFeature) and f.aggregation.value == "count"))


def _cohort_partitions(contract: Contract, table: FeatureTable) -> dict[str, list[int]]:
    """Raw counts of every partition of the cohort rows, by key (feature, column, label)."""
    out: dict[str, list[int]] = {}
    for f in contract.features:
        if isinstance(f, (MeasurementFeature, AgeFeature)):
            col = table.observed.get(f.name)
            values = col.dropna().to_numpy(np.float64) if col is not None else np.array([])
            counts, _ = np.histogram(values, bins=bin_edges(*f.range))
            cells = [int(c) for c in counts]
            if not _structurally_complete(contract, f):
                cells.append(int(col.isna().sum()) if col is not None else 0)
            out[f.name] = cells
        elif isinstance(f, (PresenceFeature, SexFeature)):
            for c in _binary_columns(f):
                ones = int(table.frame[c].sum()) if c in table.frame else 0
                out[f"column:{c}"] = [table.n_rows - ones, ones]
    y = table.frame[table.label].to_numpy()
    pos = int((y == 1).sum())
    out["label"] = [len(y) - pos, pos]
    return out


def _binary_columns(f: PresenceFeature | SexFeature) -> list[str]:
    return ([f"{f.name}_{c}" for c in f.categories]
            if isinstance(f, SexFeature) and f.kind == "categorical" else [f.name])


def publishable_units(rows_by_unit: Mapping[str, int], persons_by_unit: Mapping[str, int],
                      min_cell: int) -> Counter[str]:
    """Rows per unit as a report may show them: a unit pint parses under its canonical
    spelling, a unit it does not parse as written only when ``min_cell`` or more persons have
    it, the rest summed under "other" (a free-text unit can carry a name or a note)."""
    out: Counter[str] = Counter()
    for unit, n in rows_by_unit.items():
        label = "" if unit == "" else unit_label(unit)
        if label is None:
            label = unit if persons_by_unit.get(unit, 0) >= min_cell else OTHER_UNIT
        out[label] += int(n)
    return out


def _feature_block(f: Any, table: FeatureTable, min_cell: int,
                   dropped: Mapping[str, Cell], pub: _Published) -> dict[str, Any]:
    s = lambda n: suppress(int(n), min_cell)  # noqa: E731
    block: dict[str, Any] = {"kind": f.kind, "source": f.source}
    if isinstance(f, (MeasurementFeature, AgeFeature)):
        # The bins and the rows still missing (imputed later) partition the cohort; rows
        # dropped for a missing value are the attrition cell of the same name (same value).
        cells = pub.cells[f.name]
        bins = cells[:HIST_BINS]
        still: Cell = cells[HIST_BINS] if len(cells) > HIST_BINS else suppress(0, min_cell)
        block.update({
            "unit": f.unit,
            "missing": dropped.get(f.name, still),
            "out_of_range": s(table.out_of_range.get(f.name, 0)),
            "histogram": {"edges": bin_edges(*f.range), "counts": bins},
        })
        if isinstance(f, MeasurementFeature):
            persons = table.unit_persons.get(f.name, Counter())
            block["units"] = {u: s(n) for u, n in sorted(publishable_units(
                table.units.get(f.name, Counter()), persons, min_cell).items())}
            block["unit_failures"] = {
                reason: {u: s(n) for u, n in sorted(publishable_units(
                    per_unit, persons, min_cell).items())}
                for reason, per_unit in sorted(table.unit_failures.get(f.name, {}).items())}
            block["aggregation"] = f.aggregation.value
            block["window"] = f.window
    elif isinstance(f, (PresenceFeature, SexFeature)):
        for c in _binary_columns(f):
            block.setdefault("histogram", {})[c] = {"edges": [0, 1],
                                                    "counts": pub.cells[f"column:{c}"]}
    return block


def coverage_gaps(contract: Contract, table: FeatureTable) -> list[str]:
    """Coded features/label with no matching event at the site in any listed system."""
    return [name for name, cs in coded_sets(contract).items()
            if not name.startswith("exclude:")
            and sum(table.coverage.get(name, Counter())[sys] for sys in cs.systems()) == 0]


def passes_minimum_quality(contract: Contract, table: FeatureTable, *,
                           min_cell: int = 10) -> list[str]:
    """Violations of the contract's ``[quality]`` rules (empty list = may train).

    Messages may be shown off-site, so they carry only counts the report itself publishes
    (never one below ``min_cell``, nor one secondary suppression hid), and a share of missing
    values only when both its count and its denominator are at least ``min_cell`` (12 % of 40
    is 5).
    """
    if min_cell < 1:
        raise ValueError("min_cell must be >= 1")
    q = contract.quality
    out: list[str] = []
    pub = _Published(contract, table, min_cell)

    def shown(cell: Cell, n: int) -> str:
        if isinstance(cell, int):
            return str(cell)
        return f"fewer than {min_cell}" if n < min_cell else "a suppressed number of"

    rows = table.n_rows
    if rows < q.min_rows:
        out.append(f"cohort has {shown(pub.cohort_rows, rows)} rows; the contract needs at "
                   f"least {q.min_rows}")
    denom = _rows_before_missing(table)
    for f in contract.features:
        if not isinstance(f, (MeasurementFeature, AgeFeature)):
            continue
        limit = q.max_missing_by_feature.get(f.name, q.max_missing)
        miss = table.missing.get(f.name, 0)
        if denom and miss / denom > limit:
            share = (f"{miss / denom:.0%} of cohort rows have no value (maximum {limit:.0%})"
                     if miss >= min_cell and denom >= min_cell
                     else f"the share of cohort rows without a value exceeds the maximum "
                          f"{limit:.0%}")
            out.append(f"feature {f.name!r}: {share}; check its codes, units and window")
    if q.min_label_count:
        y = table.frame[table.label].to_numpy()
        for cls in (0, 1):
            n = int((y == cls).sum())
            if n < q.min_label_count:
                out.append(f"label {table.label!r} = {cls} in {shown(pub.label[cls], n)} rows; "
                           f"the contract needs at least {q.min_label_count} of each class")
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
