"""OMOP CDM v5.4 adapter (DuckDB): CSV folders, DuckDB files, rejects by reason."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pytest

from fedcare.core.errors import ConfigError, DataError
from fedcare.data.adapters import dates, omop
from fedcare.data.adapters.omop import load_omop

PERSON = """person_id,gender_concept_id,year_of_birth,month_of_birth,day_of_birth,\
birth_datetime,gender_source_value
1,8532,1950,6,15,,F
2,8507,1960,,,,M
3,0,1970,1,1,,F
,8507,1960,1,1,,M
4,8507,,,,,M
"""
MEASUREMENT = """measurement_id,person_id,measurement_concept_id,measurement_date,\
measurement_datetime,value_as_number,unit_source_value,measurement_source_value
1,1,3027114,2020-01-01,,200,mg/dL,2093-3
2,1,0,2020-01-01,,5,mmol/L,
3,9,3027114,2020-01-01,,200,mg/dL,
4,2,3027114,notadate,,200,mg/dL,
5,2,3027114,2020-01-01,,abc,mg/dL,
6,2,3027114.0,2020-01-01,2020-01-01 08:30:00,,,
"""
CONDITION = """condition_occurrence_id,person_id,condition_concept_id,condition_start_date,\
condition_end_date,condition_source_value
1,1,4329847,2021-01-01,,I21.4
2,2,0,2021-01-01,2020-01-01,I63.9
3,3,0,2021-01-01,,E11.9
"""
VISIT = """visit_occurrence_id,person_id,visit_concept_id,visit_start_date,visit_end_date
1,1,9202,2020-03-01,2020-03-01
"""


@pytest.fixture()
def omop_dir(tmp_path: Path) -> Path:
    for name, text in [("PERSON.csv", PERSON), ("measurement.csv", MEASUREMENT),
                       ("condition_occurrence.csv", CONDITION),
                       ("visit_occurrence.csv", VISIT)]:
        (tmp_path / name).write_text(text)
    return tmp_path


def test_folder_to_records(omop_dir: Path) -> None:
    r = load_omop(omop_dir, source_vocabulary={"condition": "ICD10CM"})
    p = r.persons.set_index("person_id")
    assert list(p.index) == ["1", "2", "3", "4"]
    assert p.loc["1", "birth_date"] == pd.Timestamp("1950-06-15")
    assert p.loc["2", "birth_date"] == pd.Timestamp("1960-07-01")  # missing month: mid-year
    assert p.loc["3", "sex"] == "female"  # concept 0, source value F
    assert pd.isna(p.loc["4", "birth_date"])
    m = r.events[r.events["domain"] == "measurement"].sort_values("value")
    assert list(m["code"]) == ["3027114", "3027114"]
    assert m["value"].iloc[0] == 200.0 and m["unit"].iloc[0] == "mg/dL"
    assert m["start"].iloc[1] == pd.Timestamp("2020-01-01 08:30")  # datetime preferred
    icd = r.events[r.events["system"] == "ICD10CM"]
    assert sorted(icd["code"]) == ["E11.9", "I21.4"]  # condition 2 rejected: end < start
    assert r.rejects == {"missing person id": 1, "missing or unparseable birth date": 1,
                         "unmapped concept (0)": 1, "event for unknown person": 1,
                         "missing or unparseable date": 1, "value not a number": 1,
                         "end before start": 1}
    assert r.source_counts["measurement"] == 6 and r.source_counts["person"] == 5


def test_without_source_vocabulary_concept_zero_is_unmapped(omop_dir: Path) -> None:
    r = load_omop(omop_dir)
    assert "ICD10CM" not in set(r.events["system"])
    assert r.rejects["unmapped concept (0)"] == 2  # measurement 2 and condition 3


def test_duckdb_file(omop_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "cdm.duckdb"
    con = duckdb.connect(str(db))
    for t in ("person", "measurement", "condition_occurrence", "visit_occurrence"):
        src = next(p for p in omop_dir.iterdir() if p.name.lower() == f"{t}.csv")
        con.execute(f"CREATE TABLE {t} AS SELECT * FROM read_csv_auto('{src}')")
    con.close()
    a = load_omop(db, source_vocabulary={"condition": "ICD10CM"})
    b = load_omop(omop_dir, source_vocabulary={"condition": "ICD10CM"})
    key = ["person_id", "domain", "system", "code"]
    pd.testing.assert_frame_equal(a.events.sort_values(key).reset_index(drop=True),
                                  b.events.sort_values(key).reset_index(drop=True))


def test_errors(tmp_path: Path, omop_dir: Path) -> None:
    with pytest.raises(DataError, match="neither a folder"):
        load_omop(tmp_path / "nope")
    (omop_dir / "PERSON.csv").unlink()
    with pytest.raises(DataError, match="no person table"):
        load_omop(omop_dir)
    with pytest.raises(ConfigError, match="unknown domain"):
        load_omop(omop_dir, source_vocabulary={"labs": "LOINC"})
    with pytest.raises(ConfigError, match="unknown code system"):
        load_omop(omop_dir, source_vocabulary={"condition": "ICD9"})


def test_table_without_required_column(omop_dir: Path) -> None:
    (omop_dir / "drug_exposure.csv").write_text("person_id,drug_start\n1,2020-01-01\n")
    with pytest.raises(DataError, match="drug_exposure lacks"):
        load_omop(omop_dir)


# -- review fixes: same-day visits, out-of-range dates, float ids -------------------------------


def _cdm(tmp: Path, **tables: str) -> Path:
    for name, text in tables.items():
        (tmp / f"{name}.csv").write_text(text)
    return tmp


def test_same_day_visit_with_start_time_is_not_end_before_start(tmp_path: Path) -> None:
    src = _cdm(tmp_path, person="person_id,gender_concept_id,year_of_birth\n1,8532,1950\n",
               visit_occurrence="""visit_occurrence_id,person_id,visit_concept_id,\
visit_start_date,visit_start_datetime,visit_end_date,visit_end_datetime
1,1,9202,2020-03-01,2020-03-01 10:30:00,2020-03-01,
2,1,9202,2020-03-02,2020-03-02 10:30:00,2020-03-02,2020-03-02 11:00:00
3,1,9202,2020-03-05,2020-03-05 10:30:00,2020-03-04,
""")
    r = load_omop(src)
    visits = r.events.sort_values("start")
    assert list(visits["start"]) == [pd.Timestamp("2020-03-01 10:30"),
                                     pd.Timestamp("2020-03-02 10:30")]
    assert visits["end"].iloc[1] == pd.Timestamp("2020-03-02 11:00")  # end datetime preferred
    assert r.rejects == {"end before start": 1}


def test_sentinel_dates_are_counted_never_raised(tmp_path: Path) -> None:
    src = _cdm(tmp_path, person="""person_id,gender_concept_id,year_of_birth,birth_datetime
1,8532,1950,
2,8507,1066,
3,8507,1950,9999-12-31
""", condition_occurrence="""condition_occurrence_id,person_id,condition_concept_id,\
condition_start_date,condition_end_date
1,1,4329847,2020-01-01,9999-12-31
2,1,4329847,1066-10-14,
3,1,4329847,2020-01-01,31/12/2020
4,1,4329847,2020-01-01T22:00:00+02:00,
""")
    r = load_omop(src)
    assert len(r.events) == 3 and r.events["end"].isna().all()
    assert pd.Timestamp("2020-01-01 22:00") in set(r.events["start"])  # wall clock kept
    assert r.persons.set_index("person_id")["birth_date"].isna().tolist() == [False, True, True]
    assert r.rejects == {dates.REASON_DATE_OUT_OF_RANGE: 1, dates.REASON_END_OUT_OF_RANGE: 1,
                         dates.REASON_BAD_END: 1, dates.REASON_BIRTH_OUT_OF_RANGE: 2}


def test_float_ids_and_gender_concepts_match(tmp_path: Path) -> None:
    src = _cdm(tmp_path, person="""person_id,gender_concept_id,year_of_birth,gender_source_value
1.0,8532.0,1950,
2.0,8507.0,1960,
3,99999,1970,X
4,,1970,
""", measurement="""measurement_id,person_id,measurement_concept_id,measurement_date,\
value_as_number,unit_source_value
1,1.0,3027114.0,2020-01-01,200,mg/dL
2,2,3027114,2020-01-01,190,mg/dL
""")
    r = load_omop(src)
    sex = r.persons.set_index("person_id")["sex"].to_dict()
    assert sex == {"1": "female", "2": "male", "3": "unknown", "4": "unknown"}
    assert sorted(r.events["person_id"]) == ["1", "2"]
    assert r.rejects == {omop.REASON_UNMAPPED_GENDER: 1}
