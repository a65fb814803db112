"""The canonical intermediate format every clinical adapter returns.

CSV, OMOP and FHIR sources look nothing alike; the data contract, the feature builder and the
quality report should not have to care. Each adapter therefore turns its source into two long
tables -- ``persons`` and ``events`` -- in the shape below, and says how many source rows it
read and how many it could not use, by reason. Nothing is dropped silently: a row that could not
become a record is a count in ``rejects`` (which the site's quality report shows).

The shape follows the OMOP CDM's split of a person table from domain tables (OHDSI, *The Book
of OHDSI*, 2019, ch. 4), flattened into one events table with a ``domain`` column so that the
feature builder runs one vectorised filter per feature instead of one per table.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from fedcare.core.errors import DataError
from fedcare.data.adapters.dates import (
    MAX_YEAR,
    MIN_YEAR,
    REASON_BIRTH_OUT_OF_RANGE,
    REASON_DATE_OUT_OF_RANGE,
    REASON_END_OUT_OF_RANGE,
    parse_dates,
)

if TYPE_CHECKING:
    import pandas as pd

SEXES: Final = ("female", "male", "other", "unknown")
DOMAINS: Final = ("measurement", "condition", "drug", "encounter")
SYSTEMS: Final = ("LOINC", "SNOMED", "ICD10CM", "RXNORM", "OMOP", "LOCAL")

PERSON_COLUMNS: Final = ("person_id", "birth_date", "sex")
EVENT_COLUMNS: Final = ("person_id", "domain", "system", "code", "value", "unit", "start", "end")

_STR_PERSON = ("person_id", "sex")
_STR_EVENT = ("person_id", "domain", "system", "code", "unit")
_DATE_PERSON = ("birth_date",)
_DATE_EVENT = ("start", "end")


def empty_persons() -> pd.DataFrame:
    """A zero-row ``persons`` table with the canonical dtypes."""
    import pandas as pd

    return pd.DataFrame({
        "person_id": pd.Series([], dtype=object),
        "birth_date": pd.Series([], dtype="datetime64[ns]"),
        "sex": pd.Series([], dtype=object),
    })


def empty_events() -> pd.DataFrame:
    """A zero-row ``events`` table with the canonical dtypes."""
    import pandas as pd

    return pd.DataFrame({
        "person_id": pd.Series([], dtype=object),
        "domain": pd.Series([], dtype=object),
        "system": pd.Series([], dtype=object),
        "code": pd.Series([], dtype=object),
        "value": pd.Series([], dtype="float64"),
        "unit": pd.Series([], dtype=object),
        "start": pd.Series([], dtype="datetime64[ns]"),
        "end": pd.Series([], dtype="datetime64[ns]"),
    })


@dataclass
class CanonicalRecords:
    """Persons and events from one site's source, plus what could not be read and why.

    ``persons``: ``person_id`` (str), ``birth_date`` (datetime64[ns]), ``sex`` (one of
    :data:`SEXES`). ``events``: ``person_id`` (str), ``domain`` (one of :data:`DOMAINS`),
    ``system`` (one of :data:`SYSTEMS`), ``code`` (str), ``value`` (float64, NaN when none),
    ``unit`` (str, "" when none, as the source wrote it), ``start`` (datetime64[ns]), ``end``
    (datetime64[ns], NaT allowed). ``rejects``: reason -> number of source rows/resources that
    could not become records. ``source_counts``: table/resource type -> rows read.

    Construction validates (see :meth:`validate`); build with :meth:`from_frames` to have
    string/date columns coerced first.
    """

    persons: pd.DataFrame
    events: pd.DataFrame
    rejects: Counter[str] = field(default_factory=Counter)
    source_counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.rejects = Counter(self.rejects)
        self.source_counts = Counter(self.source_counts)
        self.validate()

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def empty(cls) -> CanonicalRecords:
        return cls(empty_persons(), empty_events())

    @classmethod
    def from_frames(
        cls,
        persons: pd.DataFrame,
        events: pd.DataFrame,
        *,
        rejects: Mapping[str, int] | None = None,
        source_counts: Mapping[str, int] | None = None,
    ) -> CanonicalRecords:
        """Coerce columns to the canonical dtypes (ids/codes to str, dates to datetime64[ns],
        value to float64, missing unit to "") and validate. Unparseable dates or values raise
        :class:`DataError`; adapters that want to count such rows must filter them first.

        Dates are ISO 8601 (or datetimes); a zone offset is dropped (local wall-clock time,
        see :mod:`fedcare.data.adapters.dates`). A date outside years 1678-2261 is counted,
        not raised: such a start drops the event, such an end leaves it open (NaT), such a
        birth date leaves it unknown -- each under its own reason in ``rejects``.
        """
        counted: Counter[str] = Counter(rejects or {})
        return cls(
            coerce_persons(persons, rejects=counted), coerce_events(events, rejects=counted),
            Counter({k: v for k, v in counted.items() if v}), Counter(source_counts or {}),
        )

    @classmethod
    def concat(cls, parts: Iterable[CanonicalRecords]) -> CanonicalRecords:
        """Stack several sources of the same site (e.g. two extracts); counts are summed.

        A person present in several parts is kept once (first occurrence); persons with
        conflicting birth dates or sexes are a :class:`DataError`, because guessing which
        source is right would silently change the cohort.
        """
        import pandas as pd

        parts = list(parts)
        if not parts:
            return cls.empty()
        persons = pd.concat([p.persons for p in parts], ignore_index=True)
        dedup = persons.drop_duplicates(ignore_index=True)
        clash = dedup["person_id"].duplicated(keep=False)
        if clash.any():
            ids = sorted(dedup.loc[clash, "person_id"].unique())[:5]
            raise DataError(
                f"{int(dedup.loc[clash, 'person_id'].nunique())} person(s) have different birth "
                f"dates or sexes in different sources (e.g. {ids}); fix the extracts so each "
                "person has one birth date and sex")
        events = pd.concat([p.events for p in parts], ignore_index=True)
        rejects: Counter[str] = Counter()
        counts: Counter[str] = Counter()
        for p in parts:
            rejects.update(p.rejects)
            counts.update(p.source_counts)
        return cls(dedup, events, rejects, counts)

    # -- validation ---------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise :class:`DataError` listing every column whose name, dtype or values break
        the canonical format."""
        problems = _check_frame("persons", self.persons, PERSON_COLUMNS, _STR_PERSON,
                                _DATE_PERSON, ())
        problems += _check_frame("events", self.events, EVENT_COLUMNS, _STR_EVENT,
                                 _DATE_EVENT, ("value",))
        if not problems:
            problems += _check_values(self.persons, self.events)
        for name, counter in (("rejects", self.rejects), ("source_counts", self.source_counts)):
            bad = [k for k, v in counter.items() if not isinstance(k, str) or int(v) < 0]
            if bad:
                problems.append(f"{name}: keys must be str and counts >= 0 (bad: {bad[:5]})")
        if problems:
            raise DataError("canonical records are malformed:\n"
                            + "\n".join(f"  - {p}" for p in problems))

    @property
    def n_rejected(self) -> int:
        return int(sum(self.rejects.values()))


def coerce_persons(df: pd.DataFrame, *, rejects: Counter[str] | None = None) -> pd.DataFrame:
    """Return ``df`` restricted to the canonical person columns with canonical dtypes.

    A birth date outside years 1678-2261 becomes NaT, counted in ``rejects`` (without a
    counter such a date is a :class:`DataError`, because nothing would record it)."""
    _require_columns("persons", df, PERSON_COLUMNS)
    out = df.loc[:, list(PERSON_COLUMNS)].copy()
    out["person_id"] = _as_str(out["person_id"])
    out["sex"] = _as_str(out["sex"]).str.lower().replace("", "unknown")
    out["birth_date"], oor = _as_datetime(out["birth_date"], "persons.birth_date")
    _count(rejects, REASON_BIRTH_OUT_OF_RANGE, oor, "persons.birth_date")
    return out.reset_index(drop=True)


def coerce_events(df: pd.DataFrame, *, rejects: Counter[str] | None = None) -> pd.DataFrame:
    """Return ``df`` restricted to the canonical event columns with canonical dtypes.

    An event whose start is outside years 1678-2261 is dropped and an end outside them is
    cleared (open end), each counted in ``rejects`` (a :class:`DataError` without one)."""
    import pandas as pd

    _require_columns("events", df, EVENT_COLUMNS)
    out = df.loc[:, list(EVENT_COLUMNS)].copy()
    for col in _STR_EVENT:
        out[col] = _as_str(out[col])
    try:
        out["value"] = pd.to_numeric(out["value"], errors="raise").astype("float64")
    except (ValueError, TypeError) as exc:
        raise DataError(f"events.value: not numeric ({exc}); filter or count such rows "
                        "in the adapter") from exc
    out["start"], start_oor = _as_datetime(out["start"], "events.start")
    out["end"], end_oor = _as_datetime(out["end"], "events.end")
    _count(rejects, REASON_DATE_OUT_OF_RANGE, start_oor, "events.start")
    _count(rejects, REASON_END_OUT_OF_RANGE, end_oor & ~start_oor, "events.end")
    return out[~start_oor.to_numpy()].reset_index(drop=True)


# -- helpers ----------------------------------------------------------------------------------


def _require_columns(name: str, df: pd.DataFrame, cols: tuple[str, ...]) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(f"{name}: missing column(s) {missing}; expected {list(cols)}")


def _as_str(s: pd.Series) -> pd.Series:
    import pandas as pd

    out = s.astype(object)
    if s.isna().any():
        out = out.where(s.notna(), "")
    if pd.api.types.infer_dtype(out, skipna=False) not in ("string", "empty"):
        out = out.map(str).astype(object)  # slow path only for ints/mixed cells
    return out


def _as_datetime(s: pd.Series, where: str) -> tuple[pd.Series, pd.Series]:
    """(datetime64[ns] values, mask of dates outside years 1678-2261, now NaT)."""
    try:
        parsed = parse_dates(s)
    except (ValueError, TypeError, OverflowError) as exc:
        raise DataError(f"{where}: unparseable date ({exc}); filter or count such rows in "
                        "the adapter") from exc
    if parsed.unparseable.any():
        bad = s[parsed.unparseable.to_numpy()].iloc[:3].tolist()
        raise DataError(f"{where}: unparseable date(s) {bad} (ISO 8601 expected); filter or "
                        "count such rows in the adapter")
    return parsed.values, parsed.out_of_range


def _count(rejects: Counter[str] | None, reason: str, mask: pd.Series, where: str) -> None:
    n = int(mask.sum())
    if not n:
        return
    if rejects is None:
        raise DataError(f"{where}: {n} date(s) outside years {MIN_YEAR}-{MAX_YEAR}; build "
                        "with CanonicalRecords.from_frames, which counts them")
    rejects[reason] += n


def _check_frame(name: str, df: object, cols: tuple[str, ...], str_cols: tuple[str, ...],
                 date_cols: tuple[str, ...], float_cols: tuple[str, ...]) -> list[str]:
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        return [f"{name}: expected a pandas DataFrame, got {type(df).__name__}"]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        return [f"{name}: missing column(s) {missing}; expected {list(cols)} "
                "(use CanonicalRecords.from_frames to coerce)"]
    problems = []
    for c in str_cols:
        col = df[c]
        if col.dtype != object and not pd.api.types.is_string_dtype(col):
            problems.append(f"{name}.{c}: dtype {col.dtype}, expected str (object)")
        elif pd.api.types.infer_dtype(col, skipna=False) not in ("string", "empty"):
            problems.append(f"{name}.{c}: has non-str values (e.g. missing); use '' for none")
    for c in date_cols:
        if str(df[c].dtype) != "datetime64[ns]":
            problems.append(f"{name}.{c}: dtype {df[c].dtype}, expected datetime64[ns]")
    for c in float_cols:
        if str(df[c].dtype) != "float64":
            problems.append(f"{name}.{c}: dtype {df[c].dtype}, expected float64")
    return problems


def _check_values(persons: pd.DataFrame, events: pd.DataFrame) -> list[str]:
    problems = []
    for frame, col, allowed in (("persons", persons["sex"], SEXES),
                                ("events", events["domain"], DOMAINS),
                                ("events", events["system"], SYSTEMS)):
        bad = sorted(set(col.unique()) - set(allowed))
        if bad:
            problems.append(f"{frame}.{col.name}: unknown value(s) {bad[:5]}; "
                            f"allowed: {list(allowed)}")
    if persons["person_id"].eq("").any():
        problems.append("persons.person_id: empty id(s)")
    if persons["person_id"].duplicated().any():
        dup = persons.loc[persons["person_id"].duplicated(), "person_id"].iloc[:5].tolist()
        problems.append(f"persons.person_id: duplicated id(s) {dup}")
    if events["start"].isna().any():
        problems.append("events.start: missing start date(s); count such rows as rejects")
    return problems
