"""Contract + canonical records -> the feature table a learner trains on.

Every site runs the same definition: an index date per person, windows relative to it, code
sets matched in every system the contract lists, units converted to the canonical one, values
outside the plausible range discarded, one aggregate per window, a label from the outcome
window, cohort rules, then the missing-value policy. Each step counts what it removed (cohort
attrition, as in a CONSORT/STROBE flow diagram; von Elm et al., *The STROBE statement*, Lancet
2007) so the site's quality report can explain its numbers without showing a row.

Time is compared at day resolution (timestamps are floored to the day): source systems stamp
the same visit at different times of day, and a contract speaks in days.

Everything is vectorised (pandas group-bys and joins keyed by person); cost is dominated by
the events table's size, about 1-2 s per million events on one core.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fedcare.core.errors import ConfigError, DataError
from fedcare.data.contract import (
    AgeFeature,
    Aggregation,
    CodeSet,
    Contract,
    MeasurementFeature,
    PresenceFeature,
    SexFeature,
    contract_hash,
    feature_columns,
)
from fedcare.data.harmonize.codes import (
    BUILTIN_ROLLUP,
    DrugRollup,
    SiteMapping,
    match_codes,
    normalise_codes,
)
from fedcare.data.harmonize.units import REASON_NO_VALUE, convert_column, require_unit

if TYPE_CHECKING:
    import datetime as dt

    import pandas as pd

    from fedcare.data.adapters.canonical import CanonicalRecords

REASON_END_BEFORE_START = "end before start"
ATTRITION_START = "persons"
ATTRITION_NO_INDEX = "no index date"
ATTRITION_NO_AGE = "birth date unknown"


@dataclass
class FeatureTable:
    """One site's features, in contract order, and the counts that explain them.

    ``frame`` holds the feature columns (:func:`fedcare.data.contract.feature_columns`) then the
    label, indexed by ``person_id``. ``observed`` holds the numeric features' values *before*
    the missing-value policy (for quality histograms); it stays at the site like ``frame``.
    """

    frame: pd.DataFrame
    observed: pd.DataFrame
    label: str
    contract_hash: str
    attrition: list[tuple[str, int]]
    rejects: Counter[str]
    source_counts: Counter[str]
    missing: dict[str, int]
    out_of_range: dict[str, int]
    units: dict[str, Counter[str]]
    unit_failures: dict[str, dict[str, Counter[str]]]
    coverage: dict[str, Counter[str]]
    site_systems: dict[str, Counter[str]]
    imputed: dict[str, tuple[str, float]] = field(default_factory=dict)
    #: feature -> unit string as written -> distinct persons with a row in it (the quality
    #: report publishes a free-text unit only when it is seen at >= min_cell persons).
    unit_persons: dict[str, Counter[str]] = field(default_factory=dict)

    @property
    def feature_names(self) -> list[str]:
        return [c for c in self.frame.columns if c != self.label]

    @property
    def x(self) -> np.ndarray:
        return self.frame[self.feature_names].to_numpy(np.float32)

    @property
    def y(self) -> np.ndarray:
        return self.frame[self.label].to_numpy(np.int64)

    @property
    def n_rows(self) -> int:
        return len(self.frame)


def build_features(
    contract: Contract,
    records: CanonicalRecords,
    *,
    site_mapping: SiteMapping | None = None,
    index_date: dt.date | None = None,
    federation_means: Mapping[str, float] | None = None,
) -> FeatureTable:
    """Apply ``contract`` to one site's ``records``.

    ``index_date`` is the site's own date for a ``fixed_date`` rule without a date.
    ``federation_means`` (feature -> mean in the canonical unit) is used by ``impute_mean`` and
    ``flag``; a feature without one falls back to the site's own mean (recorded in
    :attr:`FeatureTable.imputed` as ``("site", value)``) -- the federation mean is preferred
    because a site mean leaks the site's case mix into every imputed row.
    """
    import pandas as pd

    records.validate()
    rejects = Counter(records.rejects)
    events = _prepare_events(records.events, site_mapping, rejects)
    persons = records.persons.set_index("person_id")
    day = events["start"].dt.normalize()

    index = _index_dates(contract, events, day, persons.index, index_date)
    attrition: list[tuple[str, int]] = [(ATTRITION_START, len(persons))]
    cohort = index.index
    attrition.append((ATTRITION_NO_INDEX, len(persons) - len(cohort)))
    birth = persons["birth_date"].reindex(cohort)
    age = _age_years(birth, index)

    site_systems = {d: Counter(g.value_counts().to_dict())
                    for d, g in events.groupby("domain", sort=True)["system"]}
    rollup = site_mapping.rollup() if site_mapping is not None else BUILTIN_ROLLUP
    ctx = _Ctx(events, day, index, rejects, {}, {}, {}, {}, rollup)
    coverage = ctx.coverage

    # -- cohort rules (before features: an excluded person's values never count) ------------
    needs_age = contract.cohort.age is not None or any(
        isinstance(f, AgeFeature) and f.missing.kind == "drop_row" for f in contract.features)
    if needs_age:
        keep = age.notna()
        attrition.append((ATTRITION_NO_AGE, int((~keep).sum())))
        cohort = cohort[keep.to_numpy()]
    if contract.cohort.age is not None:
        lo, hi = contract.cohort.age
        a = age.reindex(cohort)
        keep = (a >= lo) & (a <= hi)
        attrition.append((f"age outside [{lo:g}, {hi:g}]", int((~keep).sum())))
        cohort = cohort[keep.to_numpy()]
    for ex in contract.cohort.exclude_prior:
        hit = ctx.present(f"exclude:{ex.name}", ex.source, ex.codes, None, after=False)
        excluded = cohort.isin(hit)
        attrition.append((f"prior {ex.name}", int(excluded.sum())))
        cohort = cohort[~excluded]

    # -- features ---------------------------------------------------------------------------
    values: dict[str, pd.Series] = {}
    for f in contract.features:
        if isinstance(f, AgeFeature):
            a = age.reindex(cohort)
            bad = a.notna() & ((a < f.range[0]) | (a > f.range[1]))
            ctx.out_of_range[f.name] = int(bad.sum())
            values[f.name] = a.where(~bad)
        elif isinstance(f, SexFeature):
            sex = persons["sex"].reindex(cohort)
            if f.kind == "binary":
                values[f.name] = (sex == f.value).astype("float64")
            else:
                for c in f.categories:
                    values[f"{f.name}_{c}"] = (sex == c).astype("float64")
        elif isinstance(f, MeasurementFeature):
            values[f.name] = ctx.measurement(f, contract.windows[f.window].days_before,
                                             cohort)
        elif isinstance(f, PresenceFeature):
            hit = ctx.present(f.name, f.source, f.codes,
                              contract.windows[f.window].days_before, after=False)
            values[f.name] = pd.Series(cohort.isin(hit).astype("float64"), index=cohort)
    lab = contract.label
    hit = ctx.present(lab.name, lab.source, lab.codes, lab.days_after, after=True)
    label = pd.Series(cohort.isin(hit).astype("int64"), index=cohort)

    observed = pd.DataFrame(values, index=cohort)
    numeric = [f for f in contract.features if isinstance(f, (MeasurementFeature, AgeFeature))]
    for name in contract.cohort.require:
        miss = observed[name].isna()
        attrition.append((f"no {name} in window", int(miss.sum())))
        observed, label = observed[~miss], label[~miss]
    for f in numeric:
        # No measurement in the window is a count of 0, not a missing value: fill it before
        # drop_row looks for missing values (it would drop everyone with a count of 0).
        # cohort.require ran first: requiring a count feature still means "at least one".
        if isinstance(f, MeasurementFeature) and f.aggregation is Aggregation.COUNT:
            observed[f.name] = observed[f.name].fillna(0.0)
    missing = {f.name: int(observed[f.name].isna().sum()) for f in numeric}
    for f in numeric:
        if f.missing.kind == "drop_row":
            miss = observed[f.name].isna()
            attrition.append((f"missing {f.name}", int(miss.sum())))
            observed, label = observed[~miss], label[~miss]
    frame, imputed = _apply_missing(contract, observed, numeric, federation_means)
    frame[lab.name] = label
    frame = frame[[*feature_columns(contract), lab.name]]
    frame.index.name = "person_id"
    observed.index.name = "person_id"
    return FeatureTable(
        frame=frame, observed=observed, label=lab.name, contract_hash=contract_hash(contract),
        attrition=attrition, rejects=Counter({k: v for k, v in rejects.items() if v}),
        source_counts=Counter(records.source_counts), missing=missing,
        out_of_range=ctx.out_of_range, units=ctx.units, unit_failures=ctx.unit_failures,
        coverage=coverage, site_systems=site_systems, imputed=imputed,
        unit_persons=ctx.unit_persons)


def _prepare_events(events: pd.DataFrame, mapping: SiteMapping | None,
                    rejects: Counter[str]) -> pd.DataFrame:
    ev = events.copy()
    ev["code"] = normalise_codes(ev["system"], ev["code"])
    if mapping is not None:
        ev, _ = mapping.apply(ev)
    # By day, like everything here: an end stamped at midnight of the start day is not before
    # a start at 10:00.
    bad = ev["end"].notna() & (ev["end"].dt.normalize() < ev["start"].dt.normalize())
    rejects[REASON_END_BEFORE_START] += int(bad.sum())
    return ev[~bad].reset_index(drop=True)


def _index_dates(contract: Contract, events: pd.DataFrame, day: pd.Series,
                 persons: pd.Index, site_date: dt.date | None) -> pd.Series:
    import pandas as pd

    rule = contract.index
    if rule.rule == "fixed_date":
        date = rule.date or site_date
        if date is None:
            raise ConfigError("the contract's index rule is fixed_date without a date: set "
                              "index_date in the site source file")
        return pd.Series(pd.Timestamp(date), index=persons, dtype="datetime64[ns]")
    assert rule.start is not None and rule.end is not None
    enc = (events["domain"] == "encounter") & (day >= pd.Timestamp(rule.start)) \
        & (day <= pd.Timestamp(rule.end))
    first = day[enc].groupby(events.loc[enc, "person_id"]).min()
    first = first[first.index.isin(persons)]
    return first.astype("datetime64[ns]").sort_index()


def _age_years(birth: pd.Series, index: pd.Series) -> pd.Series:
    """Completed years: the year difference, minus one before this year's birthday."""
    b = birth.reindex(index.index)
    years = index.dt.year - b.dt.year
    before = (index.dt.month < b.dt.month) | ((index.dt.month == b.dt.month)
                                              & (index.dt.day < b.dt.day))
    return (years - before.astype("float64")).astype("float64")


@dataclass
class _Ctx:
    """Per-site working state; domain masks and each event's index date are computed once,
    because every feature filters the same (possibly million-row) events table."""

    events: pd.DataFrame
    day: pd.Series
    index: pd.Series
    rejects: Counter[str]
    coverage: dict[str, Counter[str]]
    units: dict[str, Counter[str]]
    unit_failures: dict[str, dict[str, Counter[str]]]
    unit_persons: dict[str, Counter[str]]
    rollup: DrugRollup = BUILTIN_ROLLUP
    out_of_range: dict[str, int] = field(default_factory=dict)
    _domain: dict[str, pd.DataFrame] = field(default_factory=dict)
    _event_index: pd.Series | None = None

    def _in_domain(self, domain: str) -> pd.DataFrame:
        if not self._domain:
            ev = self.events[["domain", "system", "code"]]
            self._domain = {str(d): g.drop(columns="domain") for d, g in
                            ev.groupby(ev["domain"].astype("category"), observed=True,
                                       sort=False)}
        return self._domain.get(domain, self.events.iloc[:0][["system", "code"]])

    def matched(self, name: str, domain: str, codes: CodeSet) -> pd.Series:
        import pandas as pd

        sub = self._in_domain(domain)
        hit = match_codes(sub["system"], sub["code"], codes, rollup=self.rollup)
        self.coverage[name] = Counter(sub.loc[hit, "system"].value_counts().to_dict())
        mask = pd.Series(False, index=self.events.index)
        mask[hit.index[hit.to_numpy()]] = True
        return mask

    def windowed(self, mask: pd.Series, days: int | None, *, after: bool) -> pd.Series:
        """Rows of ``mask`` inside the window: before/at index within ``days`` (None: any
        time), or, ``after``, strictly after index and within ``days``."""
        import pandas as pd

        if self._event_index is None:
            self._event_index = pd.Series(  # NaT for persons outside the cohort
                self.index.reindex(self.events["person_id"].to_numpy()).to_numpy(
                    dtype="datetime64[ns]"), index=self.events.index)
        idx = self._event_index[mask]
        d = self.day[mask]
        if after:
            inside = (d > idx) & (d <= idx + pd.Timedelta(days=days or 0))
        else:
            inside = d <= idx
            if days is not None:
                inside &= d >= idx - pd.Timedelta(days=days)
        out = pd.Series(False, index=self.events.index)
        out[mask] = inside.fillna(False).to_numpy(dtype=bool)
        return out

    def present(self, name: str, domain: str, codes: CodeSet, days: int | None, *,
                after: bool) -> pd.Index:
        import pandas as pd

        rows = self.windowed(self.matched(name, domain, codes), days, after=after)
        return pd.Index(self.events.loc[rows, "person_id"].unique())

    def measurement(self, f: MeasurementFeature, days: int | None,
                    cohort: pd.Index) -> pd.Series:
        import pandas as pd

        require_unit(f.unit, what=f"feature {f.name!r}")
        mask = self.matched(f.name, "measurement", f.codes)
        rows = self.events[self.windowed(mask, days, after=False)]
        rows = rows[rows["person_id"].isin(cohort)]
        day = self.day[rows.index]
        novalue = rows["value"].isna()
        self.rejects[REASON_NO_VALUE] += int(novalue.sum())
        rows, day = rows[~novalue], day[~novalue]
        conv = convert_column(rows["value"], rows["unit"], f.unit, f.analyte)
        self.units[f.name] = conv.rows_by_unit
        self.unit_persons[f.name] = Counter(
            {str(u): int(n) for u, n in rows.groupby(rows["unit"].fillna("").astype(str),
                                                     sort=False)["person_id"].nunique().items()})
        self.unit_failures[f.name] = conv.failed_by_unit
        for reason, n in conv.rejects.items():
            self.rejects[reason] += n
        v = pd.Series(conv.values, index=rows.index)
        lo, hi = f.range
        oor = v.notna() & ((v < lo) | (v > hi))
        self.out_of_range[f.name] = int(oor.sum())
        ok = v.notna() & ~oor
        frame = pd.DataFrame({"pid": rows.loc[ok, "person_id"], "day": day[ok], "v": v[ok]})
        return _aggregate(frame, f.aggregation).reindex(cohort)


def _aggregate(frame: pd.DataFrame, how: Aggregation) -> pd.Series:
    g = frame.groupby("pid", sort=False)["v"]
    if how is Aggregation.LAST:
        # Ties on the last day are averaged: order-independent, so two extracts of the same
        # data in different row orders give the same feature.
        last = frame.groupby("pid", sort=False)["day"].transform("max")
        return frame[frame["day"] == last].groupby("pid", sort=False)["v"].mean()
    if how is Aggregation.COUNT:
        return g.count().astype("float64")
    return getattr(g, how.value)().astype("float64")


def _apply_missing(contract: Contract, observed: pd.DataFrame,
                   numeric: list[MeasurementFeature | AgeFeature],
                   federation_means: Mapping[str, float] | None,
                   ) -> tuple[pd.DataFrame, dict[str, tuple[str, float]]]:
    frame = observed.copy()
    imputed: dict[str, tuple[str, float]] = {}
    for f in numeric:
        col = frame[f.name]
        if isinstance(f, MeasurementFeature) and f.aggregation is Aggregation.COUNT:
            frame[f.name] = col.fillna(0.0)  # no measurement in the window is a count of 0
            continue
        kind = f.missing.kind
        if kind == "drop_row":
            continue
        if kind == "impute_value":
            assert f.missing.value is not None
            fill, how = float(f.missing.value), "value"
        elif federation_means and f.name in federation_means:
            fill, how = float(federation_means[f.name]), "federation"
        else:
            if col.notna().sum() == 0:
                raise DataError(f"feature {f.name!r}: no site value to impute a mean from and no "
                                "federation mean given; pass federation_means or map the codes")
            fill, how = float(col.mean()), "site"
        if kind == "flag":
            frame[f"{f.name}_missing"] = col.isna().astype("float64")
        frame[f.name] = col.fillna(fill)
        imputed[f.name] = (how, fill)
    for g in contract.features:
        if isinstance(g, (PresenceFeature, SexFeature)):
            cols = [f"{g.name}_{c}" for c in g.categories] if (
                isinstance(g, SexFeature) and g.kind == "categorical") else [g.name]
            frame[cols] = frame[cols].fillna(0.0)
    return frame, imputed
