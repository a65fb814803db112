"""Date parsing shared by every clinical adapter: one format rule, one range, one clock.

Three rules, the same in the CSV, OMOP, FHIR and canonical paths:

- **ISO 8601 by default.** ``01/02/2020`` is 1 February in Europe and 2 January in the US; a
  parser that guesses per row (pandas ``format="mixed"``) reads ``01/02/2020`` and
  ``13/02/2020`` in different orders in the same column. Anything else must be declared
  (a strftime ``date_format``, or ``dayfirst`` for D/M/Y) and rows that do not match are
  counted, never guessed.
- **Local wall-clock time.** A trailing ``Z`` or ``+HH:MM`` offset is dropped, not converted
  to UTC: a clinical day is the local day, and converting moves late-evening events to the
  next day (and across day-based windows). A column mixing ``+01:00`` and ``+02:00`` (daylight
  saving) therefore parses like any other.
- **Years 1678-2261.** ``datetime64[ns]`` covers 1677-09-21 .. 2262-04-11, and extracts use
  sentinels outside it (``9999-12-31`` for "still open", ``1066-01-01`` for "unknown"). Such a
  date is reported as out of range, never raised as ``OutOfBoundsDatetime``: an out-of-range
  start is a counted reject, an out-of-range end becomes an open end (NaT), counted under its
  own reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import pandas as pd

MIN_YEAR: Final = 1678
MAX_YEAR: Final = 2261

REASON_DATE_OUT_OF_RANGE: Final = f"date out of range (years {MIN_YEAR}-{MAX_YEAR})"
REASON_END_OUT_OF_RANGE: Final = "end date out of range or open (end dropped, event kept)"
REASON_BAD_END: Final = "unparseable end date (end dropped, event kept)"
REASON_BIRTH_OUT_OF_RANGE: Final = "birth date out of range (person kept, age unknown)"

#: A UTC designator or numeric offset after a time of day (``10:00Z``, ``10:00:00.5+02:00``,
#: ``10:00+0200``, ``10:00-05``); a date alone (``2020-01-01``) is never touched.
#: The same text is the pattern for DuckDB's ``regexp_replace`` (RE2 syntax, ``\1``).
OFFSET_SQL: Final = r"(\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?)\s*(?:Z|[+-]\d{2}(?::?\d{2})?)$"
OFFSET_RE: Final = re.compile(OFFSET_SQL)
_ISO_START_RE: Final = re.compile(r"^\d{4}-\d{1,2}")
_DAYFIRST_RE: Final = re.compile(r"^(\d{1,2})[./-](\d{1,2})[./-](\d{4})(?:[ T](.*))?$")


@dataclass(frozen=True)
class ParsedDates:
    """``values`` (datetime64[ns], NaT where empty or unusable) and why cells are NaT:
    ``unparseable`` (non-empty, not in the declared format) and ``out_of_range`` (a real
    date outside years 1678-2261)."""

    values: pd.Series
    unparseable: pd.Series
    out_of_range: pd.Series


def strip_offset(text: str) -> str:
    """``text`` without a trailing UTC designator/offset (local wall-clock time kept)."""
    return OFFSET_RE.sub(r"\1", text.strip())


def check_date_format(date_format: str) -> str:
    """Validate a strftime format for dates: must contain a year and take no zone."""
    if "%z" in date_format or "%Z" in date_format:
        raise ValueError("date_format must not contain %z/%Z: offsets are dropped before "
                         "parsing (dates are local wall-clock time)")
    if "%Y" not in date_format and "%y" not in date_format:
        raise ValueError(f"date_format {date_format!r} has no year (%Y)")
    try:
        datetime.strptime(datetime(2001, 2, 3, 4, 5, 6).strftime(date_format), date_format)
    except ValueError as exc:
        raise ValueError(f"date_format {date_format!r} is not a usable strftime format "
                         f"({exc})") from None
    return date_format


def parse_dates(raw: pd.Series, *, date_format: str | None = None,
                dayfirst: bool = False) -> ParsedDates:
    """Parse a column of dates (strings, datetimes or a datetime64 column).

    Strings: offset stripped, then ISO 8601, or ``date_format`` (strftime, exact), or with
    ``dayfirst`` D/M/Y (``/``, ``.`` or ``-`` separated, optional time; ISO 8601 still read).
    Parsing runs once per distinct string, so a million rows with a few thousand dates cost a
    few thousand parses.
    """
    import pandas as pd

    if date_format is not None and dayfirst:
        raise ValueError("give date_format or dayfirst, not both")
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        raw = raw.dt.tz_localize(None)  # wall clock: drop the zone, keep the local time
    if pd.api.types.is_datetime64_any_dtype(raw.dtype):
        none = pd.Series(False, index=raw.index)
        return _bounded(raw, none)
    codes, uniques = pd.factorize(raw.astype(object).where(raw.notna(), "").to_numpy(
        dtype=object))
    u = pd.Series(uniques, dtype=object).map(
        lambda v: strip_offset(v.isoformat() if isinstance(v, datetime) else str(v)))
    if dayfirst:
        u = u.map(_dayfirst_to_iso)
    fmt = date_format or "ISO8601"
    parsed = pd.to_datetime(u.where(u != "", None), format=fmt, errors="coerce")
    unparseable = parsed.isna() & u.notna() & (u != "")
    # pandas coerces a few well-formed dates to NaT too: tell those apart from garbage.
    recheck = unparseable & u.map(lambda v: _python_parses(v, date_format))
    unparseable &= ~recheck
    oor_u = recheck | _outside(parsed)
    parsed = parsed.where(~oor_u)
    idx = pd.Index(range(len(uniques)))
    pick = idx[codes] if len(codes) else idx[:0]
    values = pd.Series(parsed.to_numpy()[pick], index=raw.index)
    out = ParsedDates(
        values=pd.Series(pd.to_datetime(values).to_numpy(dtype="datetime64[ns]"),
                         index=raw.index),
        unparseable=pd.Series(unparseable.to_numpy(dtype=bool)[pick], index=raw.index),
        out_of_range=pd.Series(oor_u.to_numpy(dtype=bool)[pick], index=raw.index),
    )
    return out


def _bounded(values: pd.Series, unparseable: pd.Series) -> ParsedDates:
    import pandas as pd

    oor = _outside(values)
    kept = values.where(~oor)
    return ParsedDates(
        values=pd.Series(kept.to_numpy(dtype="datetime64[ns]"), index=values.index),
        unparseable=unparseable, out_of_range=oor.astype(bool))


def _outside(values: pd.Series) -> pd.Series:
    years = values.dt.year
    return (values.notna() & ((years < MIN_YEAR) | (years > MAX_YEAR))).astype(bool)


def _dayfirst_to_iso(text: object) -> object:
    if not isinstance(text, str) or not text:
        return text
    if _ISO_START_RE.match(text):
        return text  # ISO 8601 is unambiguous: year first
    m = _DAYFIRST_RE.match(text)
    if m is None:
        return f"\x00{text}"  # never ISO: counted as unparseable
    day, month, year, rest = m.groups()
    iso = f"{year}-{int(month):02d}-{int(day):02d}"
    return f"{iso}T{rest}" if rest else iso


def _python_parses(text: object, date_format: str | None) -> bool:
    """True when ``text`` is a well-formed date (any year 1-9999) in the expected format."""
    if not isinstance(text, str) or not text or text.startswith("\x00"):
        return False
    try:
        if date_format is not None:
            datetime.strptime(text, date_format)
        else:
            datetime.fromisoformat(text)
    except ValueError:
        return False
    return True
