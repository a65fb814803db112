"""CSV adapter dates: ISO by default, declared formats, wall-clock time, year bounds, by-day
ordering -- every bad cell a counted reject, never a raw exception."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd
import pytest

from fedcare.core.errors import ConfigError
from fedcare.data.adapters import dates
from fedcare.data.adapters.canonical import CanonicalRecords
from fedcare.data.adapters.csv_adapter import load_long, load_mapping, load_wide

LONG = """
layout = "long"
{extra}
[persons]
person_id = "pid"
birth_date = "dob"
[events]
person_id = "pid"
domain_value = "encounter"
system_value = "LOCAL"
code = "code"
start = "start"
end = "end"
"""


def _long(tmp: Path, events: str, *, persons: str = "pid,dob\n1,1950-01-01\n",
          extra: str = "") -> CanonicalRecords:
    p = tmp / "p.csv"
    p.write_text(persons)
    e = tmp / "e.csv"
    e.write_text(textwrap.dedent(events).lstrip())
    m = tmp / "m.toml"
    m.write_text(LONG.format(extra=extra))
    return load_long(p, e, m)


def test_same_day_visit_with_start_time_is_kept(tmp_path: Path) -> None:
    r = _long(tmp_path, """pid,code,start,end
        1,v,2020-03-04T10:30:00,2020-03-04
        1,v,2020-03-05T10:30:00,2020-03-04
        """)
    assert len(r.events) == 1
    assert r.events["start"].iloc[0] == pd.Timestamp("2020-03-04 10:30")
    assert r.rejects == {"end before start": 1}


def test_mixed_offsets_parse_as_local_wall_clock(tmp_path: Path) -> None:
    r = _long(tmp_path, """pid,code,start,end
        1,v,2020-03-28T23:30:00+01:00,
        1,v,2020-03-29T23:30:00+02:00,2020-03-30T00:10:00+02:00
        1,v,2020-03-30T08:00:00Z,
        """)
    assert r.rejects == {}
    assert sorted(r.events["start"]) == [pd.Timestamp("2020-03-28 23:30"),
                                         pd.Timestamp("2020-03-29 23:30"),
                                         pd.Timestamp("2020-03-30 08:00")]


def test_sentinel_and_ancient_dates_are_counted_not_raised(tmp_path: Path) -> None:
    r = _long(tmp_path, """pid,code,start,end
        1,v,2020-01-01,9999-12-31
        1,v,1066-10-14,
        1,v,9999-12-31,
        1,v,2020-01-01,garbage
        """, persons="pid,dob\n1,1066-01-01\n2,1950-01-01\n")
    assert len(r.events) == 2 and r.events["end"].isna().all()
    assert r.rejects == {dates.REASON_DATE_OUT_OF_RANGE: 2, dates.REASON_END_OUT_OF_RANGE: 1,
                         dates.REASON_BAD_END: 1, dates.REASON_BIRTH_OUT_OF_RANGE: 1}
    assert r.persons.set_index("person_id")["birth_date"].isna().tolist() == [True, False]


def test_birth_year_out_of_range_is_counted(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("pid,yob,visit\n1,1066,2020-01-01\n2,1950,2020-01-01\n")
    m = load_mapping({"layout": "wide", "person_id": "pid", "birth_year": "yob",
                      "columns": [{"column": "visit", "domain": "encounter"}]})
    r = load_wide(tmp_path / "t.csv", m)
    assert r.rejects == {dates.REASON_BIRTH_OUT_OF_RANGE: 1}
    assert r.persons["birth_date"].isna().tolist() == [True, False]


def test_iso_is_the_default_and_other_formats_are_rejects(tmp_path: Path) -> None:
    r = _long(tmp_path, """pid,code,start,end
        1,v,01/02/2020,
        1,v,13/02/2020,
        1,v,2020-02-13,
        """)
    assert list(r.events["start"]) == [pd.Timestamp("2020-02-13")]
    assert r.rejects == {"missing or unparseable date": 2}


def test_declared_date_format_is_applied_exactly(tmp_path: Path) -> None:
    r = _long(tmp_path, """pid,code,start,end
        1,v,01/02/2020,
        1,v,13/02/2020,
        1,v,2020-02-13,
        """, persons="pid,dob\n1,03/04/1950\n", extra='date_format = "%d/%m/%Y"')
    assert sorted(r.events["start"]) == [pd.Timestamp("2020-02-01"), pd.Timestamp("2020-02-13")]
    assert r.rejects == {"missing or unparseable date": 1}
    assert r.persons["birth_date"].iloc[0] == pd.Timestamp("1950-04-03")


def test_dayfirst_reads_day_month_year_in_every_row(tmp_path: Path) -> None:
    r = _long(tmp_path, """pid,code,start,end
        1,v,01/02/2020,
        1,v,13.02.2020 08:15,
        1,v,02/13/2020,
        """, extra="dayfirst = true")
    assert sorted(r.events["start"]) == [pd.Timestamp("2020-02-01"),
                                         pd.Timestamp("2020-02-13 08:15")]
    assert r.rejects == {"missing or unparseable date": 1}  # month 13


@pytest.mark.parametrize(("extra", "expect"), [
    ('date_format = "%d/%m/%Y"\ndayfirst = true', "not both"),
    ('date_format = "%d/%m"', "no year"),
    ('date_format = "%Y-%m-%d%z"', "%z"),
])
def test_bad_date_rules_are_config_errors(tmp_path: Path, extra: str, expect: str) -> None:
    with pytest.raises(ConfigError, match=expect):
        _long(tmp_path, "pid,code,start,end\n1,v,2020-01-01,\n", extra=extra)


def test_canonical_from_frames_counts_out_of_range_and_keeps_wall_clock() -> None:
    persons = pd.DataFrame({"person_id": ["1", "2"], "birth_date": ["1066-01-01", "1950-01-01"],
                            "sex": ["female", "male"]})
    events = pd.DataFrame({
        "person_id": ["1", "1", "2"], "domain": "encounter", "system": "LOCAL", "code": "v",
        "value": float("nan"), "unit": "",
        "start": ["2020-01-01T23:30:00+01:00", "9999-12-31", "2020-06-01T10:00:00+02:00"],
        "end": ["9999-12-31", None, None]})
    r = CanonicalRecords.from_frames(persons, events)
    assert list(r.events["start"]) == [pd.Timestamp("2020-01-01 23:30"),
                                       pd.Timestamp("2020-06-01 10:00")]
    assert r.events["end"].isna().all()
    assert r.rejects == {dates.REASON_DATE_OUT_OF_RANGE: 1, dates.REASON_END_OUT_OF_RANGE: 1,
                         dates.REASON_BIRTH_OUT_OF_RANGE: 1}


def test_canonical_python_datetimes_out_of_range_do_not_raise() -> None:
    import datetime as dt

    persons = pd.DataFrame({"person_id": ["1"], "birth_date": [dt.datetime(9999, 12, 31)],
                            "sex": ["female"]})
    events = pd.DataFrame({"person_id": ["1"], "domain": ["encounter"], "system": ["LOCAL"],
                           "code": ["v"], "value": [1.0], "unit": [""],
                           "start": [dt.datetime(2020, 1, 1, 9)], "end": [None]})
    r = CanonicalRecords.from_frames(persons, events)
    assert r.persons["birth_date"].isna().all() and len(r.events) == 1
