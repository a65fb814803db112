"""build_features: index dates, windows, units, ranges, aggregation, label, cohort, missing."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedcare.core.errors import ConfigError
from fedcare.data.adapters.canonical import CanonicalRecords
from fedcare.data.contract import load_contract, parse_contract
from fedcare.data.features import build_features
from fedcare.data.harmonize.codes import SiteMapping

CARDIO = Path(__file__).resolve().parents[2] / "examples" / "contracts" / "cardio.toml"
INDEX = "2020-06-15"
LABS = {"sbp": ("LOINC", "8480-6", 130.0, "mm[Hg]"),
        "total_chol": ("LOINC", "2093-3", 5.0, "mmol/L"),
        "hdl": ("OMOP", "3007070", 1.2, "mmol/L"),
        "glucose": ("LOINC", "2345-7", 5.5, "mmol/L"),
        "creatinine": ("LOINC", "2160-0", 80.0, "umol/L")}


class Site:
    """Tiny record builder: persons with a 2020 encounter and all five labs by default."""

    def __init__(self) -> None:
        self.persons: list[dict] = []
        self.events: list[dict] = []

    def person(self, pid: str, birth: str = "1960-01-01", sex: str = "female", *,
               labs: bool = True, visit: str | None = INDEX) -> Site:
        self.persons.append({"person_id": pid, "birth_date": birth, "sex": sex})
        if visit:
            self.ev(pid, "encounter", "LOCAL", "v", start=visit)
        if labs:
            for sys_, code, val, unit in LABS.values():
                self.ev(pid, "measurement", sys_, code, val, unit, "2020-06-01")
        return self

    def ev(self, pid: str, domain: str, system: str, code: str, value: float = np.nan,
           unit: str = "", start: str = INDEX, end: str | None = None) -> Site:
        self.events.append({"person_id": pid, "domain": domain, "system": system, "code": code,
                            "value": value, "unit": unit, "start": start, "end": end})
        return self

    def records(self) -> CanonicalRecords:
        return CanonicalRecords.from_frames(pd.DataFrame(self.persons), pd.DataFrame(self.events))


@pytest.fixture(scope="module")
def cardio():
    return load_contract(CARDIO)


def raw() -> dict:
    return tomllib.loads(CARDIO.read_text())


def test_happy_path_in_contract_order(cardio) -> None:
    s = Site().person("a", "1950-06-16").person("b", "1960-06-15", "male")
    ft = build_features(cardio, s.records())
    assert list(ft.frame.columns) == [*cardio.feature_names, "cvd_event"]
    assert ft.frame.loc["a", "age"] == 69  # birthday is tomorrow
    assert ft.frame.loc["b", "age"] == 60  # birthday today
    assert list(ft.frame["sex_female"]) == [1.0, 0.0]
    assert ft.x.dtype == np.float32 and ft.y.dtype == np.int64
    assert ft.attrition[0] == ("persons", 2)


def test_index_is_first_2020_encounter_and_persons_without_one_leave(cardio) -> None:
    s = Site().person("a").ev("a", "encounter", "LOCAL", "v", start="2020-02-01")
    s.ev("a", "encounter", "LOCAL", "v", start="2019-12-31")
    for sys_, code, val, unit in LABS.values():
        s.ev("a", "measurement", sys_, code, val + 1, unit, "2020-01-15")
    s.person("b", visit="2021-01-01")
    ft = build_features(cardio, s.records())
    assert list(ft.frame.index) == ["a"]
    assert dict(ft.attrition)["no index date"] == 1
    # index is 1 Feb (2019 visit ignored), so the June labs are after it: January's count
    assert ft.frame.loc["a", "sbp"] == 131.0


def test_measurement_window_boundaries_and_last_value(cardio) -> None:
    s = Site().person("a", labs=False).person("b", labs=False)
    for pid in "ab":
        for name, (sys_, code, val, unit) in LABS.items():
            if name != "sbp":
                s.ev(pid, "measurement", sys_, code, val, unit, "2020-01-01")
    s.ev("a", "measurement", "LOINC", "8480-6", 111, "mmHg", "2019-06-16")  # day -365: in
    s.ev("b", "measurement", "LOINC", "8480-6", 111, "mmHg", "2019-06-15")  # day -366: out
    s.ev("a", "measurement", "SNOMED", "271649006", 140, "mm[Hg]", INDEX)  # index day: in
    s.ev("a", "measurement", "LOINC", "8480-6", 150, "mm[Hg]", INDEX)     # tie: mean
    s.ev("a", "measurement", "LOINC", "8480-6", 190, "mm[Hg]", "2020-06-16")  # after: out
    ft = build_features(cardio, s.records())
    assert ft.frame.loc["a", "sbp"] == 145.0
    assert "b" not in ft.frame.index and dict(ft.attrition)["missing sbp"] == 1
    assert ft.coverage["sbp"] == {"LOINC": 4, "SNOMED": 1}


def test_units_ranges_and_unknown_units_are_counted(cardio) -> None:
    s = Site().person("a", labs=False).person("b", labs=False).person("c", labs=False)
    for pid in "abc":
        for name, (sys_, code, val, unit) in LABS.items():
            if name != "total_chol":
                s.ev(pid, "measurement", sys_, code, val, unit, "2020-06-01")
    s.ev("a", "measurement", "LOINC", "2093-3", 193.325, "mg/dL", "2020-06-01")
    s.ev("b", "measurement", "LOINC", "2093-3", 5.0, "zorkmids", "2020-06-01")
    s.ev("b", "measurement", "LOINC", "2093-3", 5.0, "furlongs", "2020-05-01")
    s.ev("c", "measurement", "LOINC", "2093-3", 50.0, "mmol/L", "2020-06-01")  # > 20
    s.ev("c", "measurement", "LOINC", "2093-3", np.nan, "mmol/L", "2020-06-02")
    ft = build_features(cardio, s.records())
    assert ft.frame.loc["a", "total_chol"] == pytest.approx(5.0)
    assert list(ft.frame.index) == ["a"]
    assert ft.unit_failures["total_chol"] == {"unit not recognised": {"zorkmids": 1},
                                              "unit incompatible with target": {"furlongs": 1}}
    assert ft.out_of_range["total_chol"] == 1
    assert ft.rejects["measurement without numeric value"] == 1
    assert ft.units["total_chol"] == {"mg/dL": 1, "zorkmids": 1, "furlongs": 1, "mmol/L": 1}


def test_label_window_and_binary_history(cardio) -> None:
    s = Site()
    for pid in "abcde":
        s.person(pid)
    s.ev("a", "condition", "ICD10CM", "I21.4", start=INDEX)        # index day: not label
    s.ev("b", "condition", "ICD10CM", "I214", start="2025-06-15")  # day 1826: label
    s.ev("c", "condition", "SNOMED", "230690007", start="2025-06-16")  # day 1827: not
    s.ev("d", "condition", "ICD10CM", "I63.9", start="2020-06-16")     # day 1: label
    s.ev("a", "condition", "ICD10CM", "F17.210", start="1990-01-01")
    s.ev("b", "condition", "SNOMED", "44054006", start=INDEX)
    s.ev("c", "drug", "RXNORM", "83367", start="2021-01-01")        # after index: no
    s.ev("d", "drug", "OMOP", "1545958", start="2020-01-01")
    s.ev("e", "condition", "ICD10CM", "Z99", start="2019-01-01")    # unknown code
    ft = build_features(cardio, s.records())
    f = ft.frame
    assert list(f["cvd_event"]) == [0, 1, 0, 1, 0]
    assert list(f["smoker"]) == [1, 0, 0, 0, 0]
    assert list(f["diabetes"]) == [0, 1, 0, 0, 0]
    assert list(f["statin"]) == [0, 0, 0, 1, 0]


def test_cohort_age_and_exclusion(cardio) -> None:
    r = raw()
    r["cohort"]["exclude_prior"] = [{"name": "prior_mi", "codes": {"ICD10CM": ["I21*"]}}]
    c = parse_contract(r)
    s = Site().person("young", "2000-01-01").person("old", "1920-01-01").person("ok")
    s.person("nobirth", "").person("prior").ev("prior", "condition", "ICD10CM", "I21.0",
                                               start="2015-01-01")
    ft = build_features(c, s.records())
    assert list(ft.frame.index) == ["ok"]
    a = dict(ft.attrition)
    assert a["birth date unknown"] == 1 and a["age outside [30, 90]"] == 2
    assert a["prior prior_mi"] == 1


def test_end_before_start_is_counted(cardio) -> None:
    s = Site().person("a").ev("a", "drug", "RXNORM", "83367", start="2020-01-01",
                              end="2019-01-01")
    ft = build_features(cardio, s.records())
    assert ft.rejects["end before start"] == 1
    assert ft.frame.loc["a", "statin"] == 0


@pytest.mark.parametrize("policy, expect_rows, expect_value", [
    ("drop_row", 2, None),
    ("impute_value:4.5", 3, 4.5),
    ("impute_mean", 3, 5.5),  # site mean of 5 and 6
    ("flag", 3, 5.5),
])
def test_missing_policies(policy, expect_rows, expect_value) -> None:
    r = raw()
    r["features"][3]["missing"] = policy
    c = parse_contract(r)
    s = Site().person("a").person("b").person("c", labs=False)
    s.events = [e for e in s.events if not (e["person_id"] == "b" and e["code"] == "2093-3")]
    s.ev("b", "measurement", "LOINC", "2093-3", 6.0, "mmol/L", "2020-06-01")
    for name, (sys_, code, val, unit) in LABS.items():
        if name != "total_chol":
            s.ev("c", "measurement", sys_, code, val, unit, "2020-06-01")
    ft = build_features(c, s.records())
    assert ft.n_rows == expect_rows
    assert ft.missing["total_chol"] == 1
    if expect_value is not None:
        assert ft.frame.loc["c", "total_chol"] == pytest.approx(expect_value)
    if policy == "flag":
        assert list(ft.frame["total_chol_missing"]) == [0.0, 0.0, 1.0]
        assert ft.imputed["total_chol"] == ("site", pytest.approx(5.5))
    if policy == "impute_mean":
        fed = build_features(c, s.records(), federation_means={"total_chol": 4.0})
        assert fed.frame.loc["c", "total_chol"] == 4.0
        assert fed.imputed["total_chol"] == ("federation", 4.0)


def test_site_mapping_translates_local_codes(cardio) -> None:
    s = Site().person("a").ev("a", "condition", "LOCAL", "smk-01", start="2019-01-01")
    m = SiteMapping.from_rows([{"source_system": "LOCAL", "source_code": "smk-01",
                                "target_system": "SNOMED", "target_code": "77176002"}])
    assert build_features(cardio, s.records()).frame.loc["a", "smoker"] == 0
    assert build_features(cardio, s.records(), site_mapping=m).frame.loc["a", "smoker"] == 1


def test_fixed_date_index_from_site(cardio) -> None:
    r = raw()
    r["index"] = {"rule": "fixed_date"}
    c = parse_contract(r)
    s = Site().person("a", visit=None)
    with pytest.raises(ConfigError, match="index_date"):
        build_features(c, s.records())
    import datetime as dt

    ft = build_features(c, s.records(), index_date=dt.date(2020, 6, 15))
    assert ft.frame.loc["a", "age"] == 60


def test_categorical_sex_and_count_aggregation() -> None:
    r = raw()
    r["features"][1] = {"name": "sex", "source": "sex", "kind": "categorical",
                        "categories": ["female", "male", "unknown"]}
    r["features"][2]["aggregation"] = "count"
    c = parse_contract(r)
    assert c.feature_names[1:4] == ("sex_female", "sex_male", "sex_unknown")
    s = Site().person("a", sex="unknown").ev("a", "measurement", "LOINC", "8480-6", 120,
                                             "mmHg", "2020-05-01")
    ft = build_features(c, s.records())
    assert list(ft.frame.loc["a", ["sex_female", "sex_male", "sex_unknown"]]) == [0, 0, 1]
    assert ft.frame.loc["a", "sbp"] == 2.0


def test_empty_records(cardio) -> None:
    ft = build_features(cardio, CanonicalRecords.empty())
    assert ft.n_rows == 0 and ft.attrition[0] == ("persons", 0)


def test_same_day_end_at_midnight_is_not_before_a_timed_start(cardio) -> None:
    s = Site().person("a").ev("a", "drug", "RXNORM", "83367", start="2020-01-01T10:30:00",
                              end="2020-01-01")
    ft = build_features(cardio, s.records())
    assert "end before start" not in ft.rejects
    assert ft.frame.loc["a", "statin"] == 1


def test_count_feature_with_drop_row_keeps_persons_with_zero_events() -> None:
    r = raw()
    r["features"][2]["aggregation"] = "count"  # sbp, missing = "drop_row"
    assert r["features"][2]["missing"] == "drop_row"
    c = parse_contract(r)
    s = Site().person("a").person("b")
    s.events = [e for e in s.events if not (e["person_id"] == "b" and e["code"] == "8480-6")]
    ft = build_features(c, s.records())
    assert ft.n_rows == 2
    assert ft.frame.loc["a", "sbp"] == 1.0 and ft.frame.loc["b", "sbp"] == 0.0
    assert ft.missing["sbp"] == 0 and dict(ft.attrition)["missing sbp"] == 0


def test_count_feature_still_honours_cohort_require() -> None:
    r = raw()
    r["features"][2]["aggregation"] = "count"
    r["cohort"] = {**r.get("cohort", {}), "require": ["sbp"]}
    c = parse_contract(r)
    s = Site().person("a").person("b")
    s.events = [e for e in s.events if not (e["person_id"] == "b" and e["code"] == "8480-6")]
    ft = build_features(c, s.records())
    assert list(ft.frame.index) == ["a"] and dict(ft.attrition)["no sbp in window"] == 1
