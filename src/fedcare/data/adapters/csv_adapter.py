"""CSV/Parquet adapter: a site's own table + a column mapping -> :class:`CanonicalRecords`.

Two layouts, chosen by ``layout`` in the mapping file (TOML):

*wide* -- one row per person (what a hospital analyst exports from a spreadsheet)::

    layout = "wide"
    person_id = "patient_no"
    birth_date = "dob"                # or birth_year = "yob" (mid-year, 1 July, is assumed)
    sex = "gender"
    sex_values = { F = "female", M = "male" }     # source value -> canonical (else unknown)
    date = "visit_date"               # default event date for columns without their own

    [[columns]]                       # a date column -> one encounter at that date
    column = "visit_date"
    domain = "encounter"
    code = "visit"                    # system defaults to LOCAL

    [[columns]]                       # a numeric column -> one measurement
    column = "chol_mgdl"
    domain = "measurement"
    system = "LOINC"
    code = "2093-3"
    unit = "mg/dL"                    # or unit_column = "chol_unit"
    date = "lab_date"                 # optional; else the default date

    [[columns]]                       # a 0/1 (yes/no, true/false) column -> a condition/drug
    column = "smoker"                 # event when truthy, at `date` (or the default date)
    domain = "condition"
    system = "ICD10CM"
    code = "F17.210"

*long* -- an events table plus a persons table (``persons_file``/``events_file`` in the site
source file), each mapped column by column; any canonical field may be a constant instead
(``system_value = "LOINC"``, ``domain_value = "measurement"``)::

    layout = "long"
    [persons]
    person_id = "pid"
    birth_date = "dob"
    sex = "sex"
    [events]
    person_id = "pid"
    domain = "kind"
    system = "vocab"
    code = "code"
    value = "result"
    unit = "unit"
    start = "date"
    end = "end_date"                  # optional
    [domain_values]                   # optional: source value -> canonical domain
    lab = "measurement"

Dates (both layouts) are ISO 8601 unless the mapping says otherwise, with ``date_format``
(a strftime format, e.g. ``"%d/%m/%Y"``, applied exactly) or ``dayfirst = true`` (D/M/Y with
``/``, ``.`` or ``-``, optional time); a cell that does not match is a counted reject, never a
guess (see :mod:`fedcare.data.adapters.dates`: offsets dropped, local wall-clock time kept,
years 1678-2261).

Rows that cannot become records are counted in ``rejects`` by reason (missing person id, bad
date, a date out of range, a truthy flag without a date, end before start -- compared by day
--, an unknown domain/system, a value that is not a number); a missing *column* is a
configuration error naming the column.
"""

from __future__ import annotations

import tomllib
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedcare.core.errors import ConfigError, DataError
from fedcare.data.adapters.canonical import (
    DOMAINS,
    SEXES,
    CanonicalRecords,
    empty_events,
)
from fedcare.data.adapters.dates import (
    REASON_BAD_END,
    REASON_BIRTH_OUT_OF_RANGE,
    REASON_DATE_OUT_OF_RANGE,
    REASON_END_OUT_OF_RANGE,
    ParsedDates,
    check_date_format,
    parse_dates,
)
from fedcare.data.harmonize.codes import canonical_system

if TYPE_CHECKING:
    import pandas as pd

REASON_NO_PERSON = "missing person id"
REASON_UNKNOWN_PERSON = "event for unknown person"
REASON_DUP_PERSON = "duplicate person row"
REASON_BAD_DATE = "missing or unparseable date"
REASON_BAD_BIRTH = "missing or unparseable birth date"
REASON_BAD_VALUE = "value not a number"
REASON_END_BEFORE_START = "end before start"
REASON_BAD_DOMAIN = "unknown domain"
REASON_BAD_SYSTEM = "unknown code system"
REASON_NO_CODE = "missing code"
REASON_BAD_FLAG = "flag value not yes/no"

_TRUE = {"1", "1.0", "true", "t", "yes", "y"}
_FALSE = {"0", "0.0", "false", "f", "no", "n", ""}


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Dated(_M):
    """How the file writes dates: ISO 8601 unless ``date_format`` or ``dayfirst`` is set."""

    date_format: str | None = Field(None, description=(
        "strftime format of every date cell (\"%d/%m/%Y\"), applied exactly; default: ISO 8601."))
    dayfirst: bool = Field(False, description=(
        "Dates are day/month/year (with /, . or -, optional time); not with date_format."))

    @field_validator("date_format")
    @classmethod
    def _fmt(cls, v: str | None) -> str | None:
        return None if v is None else check_date_format(v)

    @model_validator(mode="after")
    def _one_rule(self) -> _Dated:
        if self.date_format is not None and self.dayfirst:
            raise ValueError("give date_format or dayfirst, not both")
        return self

    def dates(self, s: pd.Series) -> ParsedDates:
        return parse_dates(_text(s), date_format=self.date_format, dayfirst=self.dayfirst)


class WideColumn(_M):
    column: str = Field(description="The table's column this entry reads.")
    domain: Literal["measurement", "condition", "drug", "encounter"] = Field(description=(
        "measurement: a number per row; condition/drug: a yes/no flag (an event when "
        "truthy); encounter: a date column (an encounter on that date)."))
    system: str = Field("LOCAL", description=(
        "Code system of `code` (LOINC, SNOMED, ICD10CM, RXNORM, OMOP, LOCAL or an alias)."))
    code: str = Field("", description="The code every event of this column gets.")
    unit: str = Field("", description="measurement: the unit of every value.")
    unit_column: str | None = Field(None, description=(
        "measurement: a column holding each row's unit instead."))
    date: str | None = Field(None, description=(
        "Date column of this column's events (default: the mapping's `date`)."))


_SEX_VALUES = ("Source value -> female|male|other|unknown ({ F = \"female\" }); other values "
               "are unknown.")


class WideMapping(_Dated):
    layout: Literal["wide"] = Field(description="wide: one row per person.")
    person_id: str = Field(description="Column of the person identifier.")
    birth_date: str | None = Field(None, description="Column of the birth date.")
    birth_year: str | None = Field(None, description=(
        "Column of the birth year, when there is no birth date (1 July is assumed)."))
    sex: str | None = Field(None, description="Column of the sex.")
    sex_values: dict[str, str] = Field(default_factory=dict, description=_SEX_VALUES)
    date: str | None = Field(None, description=(
        "Default date column of the events (columns may name their own)."))
    columns: tuple[WideColumn, ...] = Field(min_length=1, description=(
        "[[columns]]: one per column that becomes events."))


class PersonColumns(_M):
    person_id: str = Field(description="Column of the person identifier.")
    birth_date: str | None = Field(None, description="Column of the birth date.")
    birth_year: str | None = Field(None, description=(
        "Column of the birth year, when there is no birth date (1 July is assumed)."))
    sex: str | None = Field(None, description="Column of the sex.")


class EventColumns(_M):
    person_id: str = Field(description="Column of the person identifier.")
    start: str = Field(description="Column of the event's (start) date.")
    code: str = Field(description="Column of the code.")
    domain: str | None = Field(None, description=(
        "Column of the domain (values through domain_values); or give domain_value."))
    domain_value: Literal["measurement", "condition", "drug", "encounter"] | None = Field(
        None, description="One domain for every row.")
    system: str | None = Field(None, description=(
        "Column of the code system (values through system_values); or give system_value."))
    system_value: str | None = Field(None, description="One code system for every row.")
    value: str | None = Field(None, description="Column of the numeric value (measurements).")
    unit: str | None = Field(None, description="Column of the unit (measurements).")
    end: str | None = Field(None, description="Column of the end date (optional).")


class LongMapping(_Dated):
    layout: Literal["long"] = Field(description=(
        "long: a persons table and event tables (persons, events in the source file)."))
    persons: PersonColumns = Field(description="[persons]: the persons table's columns.")
    events: EventColumns = Field(description="[events]: the event tables' columns.")
    sex_values: dict[str, str] = Field(default_factory=dict, description=_SEX_VALUES)
    domain_values: dict[str, str] = Field(default_factory=dict, description=(
        "Source value -> measurement|condition|drug|encounter ({ lab = \"measurement\" })."))
    system_values: dict[str, str] = Field(default_factory=dict, description=(
        "Source value -> code system ({ L = \"LOINC\" })."))


CsvMapping = WideMapping | LongMapping


def load_mapping(path: str | Path | Mapping[str, Any]) -> CsvMapping:
    """Read and validate a mapping (TOML path or already-parsed dict)."""
    source = None
    if isinstance(path, Mapping):
        raw = dict(path)
    else:
        p = Path(path)
        source = str(p)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"mapping file {p} does not exist", source=source) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"not valid TOML: {exc}", source=source) from None
    layout = raw.get("layout")
    model: type[WideMapping] | type[LongMapping]
    if layout == "wide":
        model = WideMapping
    elif layout == "long":
        model = LongMapping
    else:
        raise ConfigError(f"layout must be 'wide' or 'long' (got {layout!r})", source=source)
    try:
        mapping = model.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise ConfigError([f"'{'.'.join(map(str, e['loc']))}': {e['msg']}"
                           for e in exc.errors()], source=source) from None
    _check_values(mapping, source)
    return mapping


def _check_values(m: CsvMapping, source: str | None) -> None:
    problems = [f"sex_values: {k!r} -> {v!r} is not one of {list(SEXES)}"
                for k, v in m.sex_values.items() if v not in SEXES]
    systems: list[str] = []
    if isinstance(m, WideMapping):
        systems = [c.system for c in m.columns]
        if m.birth_date and m.birth_year:
            problems.append("give birth_date or birth_year, not both")
        for c in m.columns:
            if c.domain != "encounter" and not c.code:
                problems.append(f"column {c.column!r}: needs a code")
    else:
        systems = list(m.system_values.values())
        if m.events.system_value:
            systems.append(m.events.system_value)
        if (m.events.domain is None) == (m.events.domain_value is None):
            problems.append("events: give exactly one of domain (a column) or domain_value")
        if (m.events.system is None) == (m.events.system_value is None):
            problems.append("events: give exactly one of system (a column) or system_value")
        problems += [f"domain_values: {k!r} -> {v!r} is not one of {list(DOMAINS)}"
                     for k, v in m.domain_values.items() if v not in DOMAINS]
    for s in systems:
        try:
            canonical_system(s)
        except ConfigError as exc:
            problems.append(exc.problems[0])
    if problems:
        raise ConfigError(problems, source=source)


# -- reading ----------------------------------------------------------------------------------


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV (.csv, .csv.gz) or Parquet (.parquet, .pq) file, every column as read."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file {p} does not exist; check the path in the site source file")
    name = p.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            return pd.read_parquet(p)
        if name.endswith((".csv", ".csv.gz", ".tsv")):
            return pd.read_csv(p, dtype=str, keep_default_na=False,
                               sep="\t" if name.endswith(".tsv") else ",")
    except pd.errors.EmptyDataError:
        raise DataError(f"{p} is empty (no header); export it again") from None
    except (OSError, ValueError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {p} ({type(exc).__name__}); is it really "
                        f"{'Parquet' if name.endswith(('.parquet', '.pq')) else 'CSV'}?") from exc
    raise DataError(f"cannot tell the format of {p} from its name; use .csv, .csv.gz, .tsv, "
                    ".parquet or .pq")


def _need(df: pd.DataFrame, cols: Sequence[str | None], where: str) -> None:
    missing = [c for c in cols if c is not None and c not in df.columns]
    if missing:
        raise ConfigError(f"{where}: column(s) {missing} not in the file; its columns are "
                          f"{list(map(str, df.columns))[:30]}")


def _text(s: pd.Series) -> pd.Series:
    return s.astype(object).where(s.notna(), "").astype(str).str.strip()


def _numbers(s: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(float values, mask of non-empty cells that are not numbers)."""
    import pandas as pd

    t = _text(s)
    v = pd.to_numeric(t.where(t != "", None), errors="coerce").astype("float64")
    return v, v.isna() & (t != "")


def _persons(df: pd.DataFrame, pid: str, birth_date: str | None, birth_year: str | None,
             sex: str | None, sex_values: Mapping[str, str], m: _Dated,
             rejects: Counter[str]) -> pd.DataFrame:
    import pandas as pd

    out = pd.DataFrame({"person_id": _text(df[pid])})
    oor = pd.Series(False, index=out.index)
    if birth_date:
        parsed = m.dates(df[birth_date])
        out["birth_date"], oor = parsed.values, parsed.out_of_range
    elif birth_year:
        year, _ = _numbers(df[birth_year])
        parsed = parse_dates(year.map(
            lambda y: f"{int(y):04d}-07-01" if np.isfinite(y) and 0 < y < 10_000 else ""))
        out["birth_date"], oor = parsed.values, parsed.out_of_range
    else:
        out["birth_date"] = pd.Series(pd.NaT, index=out.index, dtype="datetime64[ns]")
    if birth_date or birth_year:  # person kept either way: age just unknown
        named = out["person_id"] != ""
        rejects[REASON_BIRTH_OUT_OF_RANGE] += int((oor & named).sum())
        rejects[REASON_BAD_BIRTH] += int((out["birth_date"].isna() & ~oor & named).sum())
    if sex:
        raw = _text(df[sex])
        lookup = {**{s: s for s in SEXES}, **sex_values}
        out["sex"] = raw.map(lambda v: lookup.get(v, lookup.get(v.lower(), "unknown")))
    else:
        out["sex"] = "unknown"
    no_id = out["person_id"] == ""
    rejects[REASON_NO_PERSON] += int(no_id.sum())
    out = out[~no_id]
    dup = out["person_id"].duplicated()
    rejects[REASON_DUP_PERSON] += int(dup.sum())
    return out[~dup].reset_index(drop=True)


def _event_dates(start: ParsedDates, end: ParsedDates | None, index: pd.Index
                 ) -> dict[str, pd.Series]:
    """The date columns of an event frame, plus the notes :func:`_finish` counts: whether the
    start was out of range, and why an end was dropped (event kept with an open end)."""
    import pandas as pd

    if end is None:
        end_values = pd.Series(pd.NaT, index=index, dtype="datetime64[ns]")
        note = pd.Series("", index=index, dtype=object)
    else:
        end_values = end.values
        note = pd.Series(np.where(end.out_of_range, REASON_END_OUT_OF_RANGE,
                                  np.where(end.unparseable, REASON_BAD_END, "")),
                         index=index, dtype=object)
    return {"start": start.values, "end": end_values, "_start_oor": start.out_of_range,
            "_end_note": note}


def _finish(persons: pd.DataFrame, events: pd.DataFrame, rejects: Counter[str],
            counts: Counter[str]) -> CanonicalRecords:
    """Drop (and count) events without a person or a usable date, or ending before the day
    they start (compared by day: a same-day visit stamped 10:00-00:00 is fine)."""
    no_pid = events["person_id"] == ""
    rejects[REASON_NO_PERSON] += int(no_pid.sum())
    unknown = ~no_pid & ~events["person_id"].isin(persons["person_id"])
    rejects[REASON_UNKNOWN_PERSON] += int(unknown.sum())
    oor = events["_start_oor"].astype(bool) & ~no_pid & ~unknown
    rejects[REASON_DATE_OUT_OF_RANGE] += int(oor.sum())
    no_date = events["start"].isna() & ~no_pid & ~unknown & ~oor
    rejects[REASON_BAD_DATE] += int(no_date.sum())
    keep = ~(no_pid | unknown | no_date | oor)
    order = keep & events["end"].notna() & (
        events["end"].dt.normalize() < events["start"].dt.normalize())
    rejects[REASON_END_BEFORE_START] += int(order.sum())
    kept = keep & ~order
    for reason, n in events.loc[kept, "_end_note"].value_counts().items():
        if reason:
            rejects[str(reason)] += int(n)
    events = events[kept].drop(columns=["_start_oor", "_end_note"])
    rejects = Counter({k: v for k, v in rejects.items() if v})
    return CanonicalRecords.from_frames(persons, events, rejects=rejects, source_counts=counts)


# -- wide -------------------------------------------------------------------------------------


def load_wide(paths: Sequence[str | Path] | str | Path, mapping: WideMapping | str | Path
              ) -> CanonicalRecords:
    """One or more wide tables (same mapping) -> canonical records."""
    m = mapping if isinstance(mapping, WideMapping) else load_mapping(mapping)
    if not isinstance(m, WideMapping):
        raise ConfigError("load_wide needs a mapping with layout = 'wide'")
    parts = [_load_wide_one(Path(p), m) for p in _as_paths(paths)]
    return CanonicalRecords.concat(parts)


def _load_wide_one(path: Path, m: WideMapping) -> CanonicalRecords:
    import pandas as pd

    df = read_table(path)
    cols = [m.person_id, m.birth_date, m.birth_year, m.sex, m.date]
    for c in m.columns:
        cols += [c.column, c.unit_column, c.date]
    _need(df, cols, f"mapping for {path.name}")
    rejects: Counter[str] = Counter()
    counts: Counter[str] = Counter({path.name: len(df)})
    persons = _persons(df, m.person_id, m.birth_date, m.birth_year, m.sex, m.sex_values, m,
                       rejects)
    pid = _text(df[m.person_id])
    # A row is used once: id-less rows are counted as persons, a repeated id's row as a
    # duplicate person row; neither contributes events.
    usable = (pid != "") & ~pid.duplicated()
    default_date = m.dates(df[m.date]) if m.date else None
    frames = []
    for c in m.columns:
        system = canonical_system(c.system)
        cell = _text(df[c.column])
        if c.domain == "encounter":
            start = m.dates(df[c.column])
            present = cell != ""
            value = pd.Series(np.nan, index=df.index)
        else:
            date = m.dates(df[c.date]) if c.date else default_date
            if date is None:
                raise ConfigError(f"column {c.column!r}: give it a date column (date = ...) or "
                                  "set a default date for the table")
            start = date
            if c.domain == "measurement":
                value, bad = _numbers(df[c.column])
                rejects[REASON_BAD_VALUE] += int(bad.sum())
                present = value.notna()
            else:
                low = cell.str.lower()
                truthy, falsy = low.isin(_TRUE), low.isin(_FALSE)
                rejects[REASON_BAD_FLAG] += int((~truthy & ~falsy).sum())
                present = truthy
                value = pd.Series(np.nan, index=df.index)
        unit = _text(df[c.unit_column]) if c.unit_column else pd.Series(c.unit, index=df.index)
        frames.append(pd.DataFrame({
            "person_id": pid, "domain": c.domain, "system": system, "code": c.code,
            "value": value, "unit": unit if c.domain == "measurement" else "",
            **_event_dates(start, None, df.index),
        })[(present & usable).to_numpy()])
    events = pd.concat(frames, ignore_index=True) if frames else _empty_noted()
    return _finish(persons, events, rejects, counts)


def _empty_noted() -> pd.DataFrame:
    import pandas as pd

    ev = empty_events()
    ev["_start_oor"] = pd.Series([], dtype=bool)
    ev["_end_note"] = pd.Series([], dtype=object)
    return ev


# -- long -------------------------------------------------------------------------------------


def load_long(persons_path: str | Path, events_path: str | Path | Sequence[str | Path],
              mapping: LongMapping | str | Path) -> CanonicalRecords:
    """A persons table and one or more events tables -> canonical records."""
    import pandas as pd

    m = mapping if isinstance(mapping, LongMapping) else load_mapping(mapping)
    if not isinstance(m, LongMapping):
        raise ConfigError("load_long needs a mapping with layout = 'long'")
    pdf = read_table(persons_path)
    pc = m.persons
    _need(pdf, [pc.person_id, pc.birth_date, pc.birth_year, pc.sex], "mapping [persons]")
    rejects: Counter[str] = Counter()
    counts: Counter[str] = Counter({Path(persons_path).name: len(pdf)})
    persons = _persons(pdf, pc.person_id, pc.birth_date, pc.birth_year, pc.sex, m.sex_values,
                       m, rejects)
    frames = []
    for ep in _as_paths(events_path):
        edf = read_table(ep)
        counts[Path(ep).name] += len(edf)
        frames.append(_long_events(edf, m, rejects))
    events = pd.concat(frames, ignore_index=True) if frames else _empty_noted()
    return _finish(persons, events, rejects, counts)


def _long_events(df: pd.DataFrame, m: LongMapping, rejects: Counter[str]) -> pd.DataFrame:
    import pandas as pd

    ec = m.events
    _need(df, [ec.person_id, ec.start, ec.code, ec.domain, ec.system, ec.value, ec.unit,
               ec.end], "mapping [events]")
    n = len(df)
    if ec.domain:
        raw = _text(df[ec.domain])
        lookup = {**{d: d for d in DOMAINS}, **m.domain_values}
        domain = raw.map(lambda v: lookup.get(v, lookup.get(v.lower(), "")))
    else:
        domain = pd.Series([ec.domain_value] * n, index=df.index, dtype=object)
    if ec.system:
        raw = _text(df[ec.system])
        uniq = {}
        for v in raw.unique():
            try:
                uniq[v] = canonical_system(m.system_values.get(v, v))
            except ConfigError:
                uniq[v] = ""
        system = raw.map(uniq)
    else:
        system = pd.Series([canonical_system(str(ec.system_value))] * n, index=df.index,
                           dtype=object)
    if ec.value:
        value, bad_value = _numbers(df[ec.value])
    else:
        value, bad_value = pd.Series(np.nan, index=df.index), pd.Series(False, index=df.index)
    ev = pd.DataFrame({
        "person_id": _text(df[ec.person_id]), "domain": domain, "system": system,
        "code": _text(df[ec.code]), "value": value,
        "unit": _text(df[ec.unit]) if ec.unit else "",
        **_event_dates(m.dates(df[ec.start]), m.dates(df[ec.end]) if ec.end else None,
                       df.index),
    })
    bad = pd.Series(False, index=df.index)
    for reason, mask in ((REASON_BAD_DOMAIN, ev["domain"] == ""),
                         (REASON_BAD_SYSTEM, ev["system"] == ""),
                         (REASON_NO_CODE, ev["code"] == ""),
                         (REASON_BAD_VALUE, bad_value)):
        mask = mask & ~bad
        rejects[reason] += int(mask.sum())
        bad |= mask
    return ev[~bad]


def _as_paths(paths: Sequence[str | Path] | str | Path) -> list[Path]:
    if isinstance(paths, (str, Path)):
        return [Path(paths)]
    out = [Path(p) for p in paths]
    if not out:
        raise DataError("no data files given")
    return out
