"""Data contract parsing, canonical records, CSV adapter, site source file and `fedcare data`."""

from __future__ import annotations

import json
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from fedcare.core.errors import ConfigError, DataError
from fedcare.data.adapters.canonical import CanonicalRecords
from fedcare.data.adapters.csv_adapter import load_long, load_mapping, load_wide
from fedcare.data.contract import contract_hash, load_contract, parse_contract

CARDIO = Path(__file__).resolve().parents[2] / "examples" / "contracts" / "cardio.toml"


def cardio_raw() -> dict:
    return tomllib.loads(CARDIO.read_text())


# -- contract -----------------------------------------------------------------------------------


def test_demo_contract_loads_in_order() -> None:
    c = load_contract(CARDIO)
    assert c.feature_names == ("age", "sex_female", "sbp", "total_chol", "hdl", "glucose",
                               "creatinine", "smoker", "diabetes", "statin")
    assert c.label.days_after == 1826
    assert set(c.systems()) == {"LOINC", "SNOMED", "ICD10CM", "RXNORM", "OMOP"}


def test_hash_is_stable_and_content_sensitive() -> None:
    a, b = parse_contract(cardio_raw()), parse_contract(cardio_raw())
    assert contract_hash(a) == contract_hash(b)
    raw = cardio_raw()
    raw["label"]["days_after"] = 1000
    assert contract_hash(parse_contract(raw)) != contract_hash(a)


@pytest.mark.parametrize("mutate, expect", [
    (lambda r: r.update(colour="red"), "unknown key 'colour'"),
    (lambda r: r["features"][2].update(window="nope"), "unknown window"),
    (lambda r: r["features"][2].update(missing="impute_value:x"), "impute_value needs a number"),
    (lambda r: r["features"][2].update(missing="guess"), "unknown missing policy"),
    (lambda r: r["features"][2].update(codes={}), "at least one code"),
    (lambda r: r["features"][2].update(codes={"ICD9": ["1"]}), "ICD9"),
    (lambda r: r["features"][2].update(range=[5, 1]), "range min must be below max"),
    (lambda r: r["features"][3].update(name="sbp"), "duplicate feature name"),
    (lambda r: r["index"].update(end="2019-01-01"), "end is before start"),
    (lambda r: r["cohort"].update(require=["smoker"]), "not a measurement feature"),
    (lambda r: r["features"][7].update(codes={"ICD10CM": ["F1 7"]}), "malformed code"),
])
def test_bad_contracts_are_refused_with_the_key(mutate, expect) -> None:
    raw = cardio_raw()
    mutate(raw)
    with pytest.raises(ConfigError) as err:
        parse_contract(raw)
    assert expect in str(err.value)


def test_missing_contract_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_contract(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("name = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_contract(tmp_path / "bad.toml")


# -- canonical records --------------------------------------------------------------------------


def _persons() -> pd.DataFrame:
    return pd.DataFrame({"person_id": ["1", "2"], "birth_date": ["1950-01-01", "1960-01-01"],
                         "sex": ["female", "male"]})


def _events(**over) -> pd.DataFrame:
    row = {"person_id": "1", "domain": "measurement", "system": "LOINC", "code": "8480-6",
           "value": 120.0, "unit": "mm[Hg]", "start": "2020-01-01", "end": None}
    row.update(over)
    return pd.DataFrame([row])


def test_from_frames_coerces_dtypes() -> None:
    r = CanonicalRecords.from_frames(_persons(), _events(value=120, unit=None))
    assert str(r.events["value"].dtype) == "float64"
    assert str(r.events["start"].dtype) == "datetime64[ns]"
    assert r.events["unit"].iloc[0] == ""


@pytest.mark.parametrize("over, expect", [
    ({"domain": "lab"}, "events.domain: unknown value"),
    ({"system": "ICD9"}, "events.system: unknown value"),
])
def test_bad_vocabulary_is_refused(over, expect) -> None:
    with pytest.raises(DataError, match=expect):
        CanonicalRecords.from_frames(_persons(), _events(**over))


def test_unparseable_date_and_value_raise() -> None:
    with pytest.raises(DataError, match="unparseable date"):
        CanonicalRecords.from_frames(_persons(), _events(start="not a date"))
    with pytest.raises(DataError, match="not numeric"):
        CanonicalRecords.from_frames(_persons(), _events(value="abc"))


def test_raw_frames_are_validated() -> None:
    with pytest.raises(DataError, match="expected datetime64"):
        CanonicalRecords(_persons(), CanonicalRecords.empty().events)
    p = CanonicalRecords.from_frames(_persons(), _events()).persons
    with pytest.raises(DataError, match="duplicated id"):
        CanonicalRecords(pd.concat([p, p]), CanonicalRecords.empty().events)


def test_concat_sums_counts_and_refuses_conflicts() -> None:
    a = CanonicalRecords.from_frames(_persons(), _events(), rejects={"x": 1},
                                     source_counts={"t": 2})
    both = CanonicalRecords.concat([a, a])
    assert len(both.persons) == 2 and len(both.events) == 2
    assert both.rejects["x"] == 2 and both.source_counts["t"] == 4
    other = _persons().assign(sex=["male", "male"])
    with pytest.raises(DataError, match="different birth dates or sexes"):
        CanonicalRecords.concat([a, CanonicalRecords.from_frames(other, _events())])


# -- CSV adapter --------------------------------------------------------------------------------

WIDE_MAPPING = """
layout = "wide"
person_id = "pid"
birth_date = "dob"
sex = "gender"
sex_values = { F = "female", M = "male" }
date = "visit"

[[columns]]
column = "visit"
domain = "encounter"
code = "visit"

[[columns]]
column = "chol"
domain = "measurement"
system = "LOINC"
code = "2093-3"
unit_column = "chol_unit"
date = "lab_date"

[[columns]]
column = "smoker"
domain = "condition"
system = "icd-10-cm"
code = "F17.210"
"""

WIDE_CSV = """pid,dob,gender,visit,lab_date,chol,chol_unit,smoker
1,1950-03-01,F,2020-02-01,2019-12-01,200,mg/dL,yes
2,1960-01-01,M,2020-05-01,2020-04-01,5.1,mmol/L,0
,1960-01-01,M,2020-05-01,2020-04-01,5.1,mmol/L,0
3,bad,X,,2020-04-01,abc,mmol/L,maybe
2,1960-01-01,M,2020-05-01,2020-04-01,5.1,mmol/L,0
"""


def _write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_text(textwrap.dedent(text).lstrip())
    return p


def test_wide_csv_to_records_counts_every_bad_row(tmp_path: Path) -> None:
    r = load_wide(_write(tmp_path, "t.csv", WIDE_CSV), _write(tmp_path, "m.toml", WIDE_MAPPING))
    assert list(r.persons["person_id"]) == ["1", "2", "3"]
    assert list(r.persons["sex"]) == ["female", "male", "unknown"]
    chol = r.events[r.events["code"] == "2093-3"]
    assert sorted(chol["value"]) == [5.1, 200.0]
    assert set(chol["unit"]) == {"mg/dL", "mmol/L"}
    smoke = r.events[r.events["domain"] == "condition"]
    assert list(smoke["person_id"]) == ["1"] and smoke["system"].iloc[0] == "ICD10CM"
    assert r.rejects == {"missing person id": 1, "duplicate person row": 1,
                         "missing or unparseable birth date": 1, "value not a number": 1,
                         "flag value not yes/no": 1}
    assert r.source_counts == {"t.csv": 5}


def test_wide_mapping_errors(tmp_path: Path) -> None:
    csv = _write(tmp_path, "t.csv", WIDE_CSV)
    with pytest.raises(ConfigError, match=r"\['nope'\] not in the file"):
        load_wide(csv, load_mapping({**tomllib.loads(WIDE_MAPPING), "person_id": "nope"}))
    with pytest.raises(ConfigError, match="layout must be"):
        load_mapping({"layout": "tall"})
    bad = tomllib.loads(WIDE_MAPPING)
    bad["columns"][1]["system"] = "ICD9"
    with pytest.raises(ConfigError, match="unknown code system 'ICD9'"):
        load_mapping(bad)
    with pytest.raises(DataError, match="does not exist"):
        load_wide(tmp_path / "missing.csv", load_mapping(tomllib.loads(WIDE_MAPPING)))


LONG_MAPPING = """
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
end = "end_date"
[domain_values]
lab = "measurement"
dx = "condition"
[system_values]
"http://loinc.org" = "LOINC"
"""


def test_long_csv_counts_out_of_order_and_unknowns(tmp_path: Path) -> None:
    persons = _write(tmp_path, "p.csv", "pid,dob,sex\n1,1950-01-01,female\n2,1960-01-01,male\n")
    events = _write(tmp_path, "e.csv", """pid,kind,vocab,code,result,unit,date,end_date
1,lab,http://loinc.org,8480-6,120,mm[Hg],2020-01-01,
1,dx,ICD10CM,I21.4,,,2021-01-01,2020-01-01
2,lab,LOINC,8480-6,130,mmHg,2020-01-01,
2,xray,LOINC,1,,,2020-01-01,
2,lab,ICD9,1,,,2020-01-01,
9,lab,LOINC,8480-6,130,mmHg,2020-01-01,
2,lab,LOINC,8480-6,130,mmHg,notadate,
""")
    r = load_long(persons, events, _write(tmp_path, "m.toml", LONG_MAPPING))
    assert len(r.events) == 2
    assert set(r.events["system"]) == {"LOINC"}
    assert r.rejects == {"end before start": 1, "unknown domain": 1, "unknown code system": 1,
                         "event for unknown person": 1, "missing or unparseable date": 1}


# -- site source file + CLI ---------------------------------------------------------------------


def _cli() -> typer.Typer:
    from fedcare.cli.data import app

    return app


def _wide_site(tmp: Path, n: int, *, units: str = "mg/dL") -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        rows.append({
            "pid": f"p{i}", "dob": f"{1940 + i % 40}-03-01", "gender": "F" if i % 2 else "M",
            "visit": "2020-06-01", "lab_date": "2020-05-01",
            "sbp": rng.integers(100, 180), "chol": 200, "hdl": 50, "glu": 90, "crea": 80,
            "smoker": int(i % 3 == 0), "diab": int(i % 5 == 0), "statin": int(i % 4 == 0),
            "cvd": int(i % 3 == 0), "cvd_date": "2022-01-01",
        })
    pd.DataFrame(rows).to_csv(tmp / "site.csv", index=False)
    cols = [("sbp", "LOINC", "8480-6", "mm[Hg]"), ("chol", "LOINC", "2093-3", units),
            ("hdl", "LOINC", "2085-9", "mg/dL"), ("glu", "LOINC", "2345-7", "mg/dL"),
            ("crea", "LOINC", "2160-0", "umol/L")]
    mapping = ('layout = "wide"\nperson_id = "pid"\nbirth_date = "dob"\nsex = "gender"\n'
               'sex_values = { F = "female", M = "male" }\ndate = "lab_date"\n'
               '[[columns]]\ncolumn = "visit"\ndomain = "encounter"\ncode = "v"\n')
    for col, sys_, code, unit in cols:
        mapping += (f'[[columns]]\ncolumn = "{col}"\ndomain = "measurement"\nsystem = "{sys_}"\n'
                    f'code = "{code}"\nunit = "{unit}"\n')
    for col, dom, sys_, code, date in [("smoker", "condition", "ICD10CM", "F17.2", "lab_date"),
                                       ("diab", "condition", "ICD10CM", "E11.9", "lab_date"),
                                       ("statin", "drug", "RXNORM", "83367", "lab_date"),
                                       ("cvd", "condition", "ICD10CM", "I21.0", "cvd_date")]:
        mapping += (f'[[columns]]\ncolumn = "{col}"\ndomain = "{dom}"\nsystem = "{sys_}"\n'
                    f'code = "{code}"\ndate = "{date}"\n')
    (tmp / "mapping.toml").write_text(mapping)
    src = tmp / "source.toml"
    src.write_text('site = "h3"\nformat = "csv"\npaths = ["site.csv"]\nmapping = "mapping.toml"\n')
    return src


def test_cli_check_passes_and_writes_reports(tmp_path: Path) -> None:
    src = _wide_site(tmp_path, 120)
    res = CliRunner().invoke(_cli(), ["check", "--contract", str(CARDIO), "--data", str(src),
                                      "--out", str(tmp_path / "r.json"),
                                      "--html", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    assert "passes minimum quality" in res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["site"] == "h3" and report["passes"] is True
    assert report["cohort_rows"] == 120
    assert "<html" in (tmp_path / "r.html").read_text()


def test_cli_check_exits_2_with_violations(tmp_path: Path) -> None:
    src = _wide_site(tmp_path, 30, units="furlongs")  # 30 rows < min_rows; bad chol unit
    res = CliRunner().invoke(_cli(), ["check", "--contract", str(CARDIO), "--data", str(src)])
    assert res.exit_code == 2
    assert "fails minimum quality" in res.output
    assert "rows; the contract needs at least 50" in res.output


def test_cli_bad_source_file_exits_2(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text('format = "xml"\n')
    res = CliRunner().invoke(_cli(), ["check", "--contract", str(CARDIO), "--data",
                                      str(tmp_path / "s.toml")])
    assert res.exit_code == 2
    assert "format" in res.output and "Usage" not in res.output
