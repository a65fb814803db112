"""Site quality report: suppression, no raw values, minimum-quality rules."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedcare.data.adapters.canonical import CanonicalRecords
from fedcare.data.contract import load_contract, parse_contract
from fedcare.data.features import build_features
from fedcare.data.quality import (
    SECONDARY,
    passes_minimum_quality,
    quality_report,
    render_html,
    suppress_partition,
)

CARDIO = Path(__file__).resolve().parents[2] / "examples" / "contracts" / "cardio.toml"


def site(n: int, *, seed: int = 0, chol_unit: str = "mmol/L", snomed_smoking: bool = False,
         label_every: int = 4) -> CanonicalRecords:
    rng = np.random.default_rng(seed)
    persons, events = [], []

    def ev(pid, domain, system, code, value=np.nan, unit="", start="2020-06-01"):
        events.append({"person_id": pid, "domain": domain, "system": system, "code": code,
                       "value": value, "unit": unit, "start": start, "end": None})

    for i in range(n):
        pid = f"p{i}"
        persons.append({"person_id": pid, "birth_date": f"{1935 + i % 50}-01-01",
                        "sex": "female" if i % 2 else "male"})
        ev(pid, "encounter", "LOCAL", "v", start="2020-06-15")
        ev(pid, "measurement", "LOINC", "8480-6", float(rng.normal(135, 15)), "mm[Hg]")
        ev(pid, "measurement", "LOINC", "2093-3", float(rng.normal(5, 1)), chol_unit)
        ev(pid, "measurement", "LOINC", "2085-9", 1.3, "mmol/L")
        ev(pid, "measurement", "LOINC", "2345-7", 5.5, "mmol/L")
        ev(pid, "measurement", "LOINC", "2160-0", 85.0, "umol/L")
        if i % 3 == 0:
            ev(pid, "condition", *(("SNOMED", "77176002") if snomed_smoking
                                   else ("ICD10CM", "F17.210")), start="2015-01-01")
        if i % 5 == 0:
            ev(pid, "condition", "ICD10CM", "E11.9", start="2015-01-01")
            ev(pid, "drug", "RXNORM", "83367", start="2019-01-01")
        if i % label_every == 0:
            ev(pid, "condition", "ICD10CM", "I21.4", start="2022-01-01")
    return CanonicalRecords.from_frames(pd.DataFrame(persons), pd.DataFrame(events))


@pytest.fixture(scope="module")
def cardio():
    return load_contract(CARDIO)


def _cells(obj) -> list:
    """Every count-like leaf of a report."""
    if isinstance(obj, dict):
        return [c for k, v in obj.items() if k not in ("edges", "hash", "min_cell", "schema")
                for c in _cells(v)]
    if isinstance(obj, list):
        return [c for v in obj for c in _cells(v)]
    return [obj] if isinstance(obj, int) and not isinstance(obj, bool) else []


def test_report_is_json_and_every_count_is_suppressed_below_min_cell(cardio) -> None:
    rep = quality_report(cardio, site(200), site="h1")
    json.dumps(rep)
    assert rep["passes"] is True and rep["violations"] == []
    assert rep["cohort_rows"] == 200
    assert all(c >= 10 for c in _cells(rep)), "a count below min_cell leaked"
    assert rep["label"] == {"name": "cvd_event", "negative": 150, "positive": 50}
    hist = rep["features"]["sbp"]["histogram"]
    assert hist["edges"][0] == 60 and hist["edges"][-1] == 260 and len(hist["counts"]) == 10
    assert rep["systems_unused"] == ["SNOMED", "OMOP"]
    assert rep["code_coverage"]["smoker"]["ICD10CM"] == 67


def test_no_raw_value_leaves_the_site(cardio) -> None:
    records = site(60)
    text = json.dumps(quality_report(cardio, records))
    sbp = records.events.loc[records.events["code"] == "8480-6", "value"]
    for v in sbp:
        assert f"{v:.4f}"[:-1] not in text
    assert '"p1"' not in text and '"p10"' not in text  # no person id either


def test_min_cell_parameter(cardio) -> None:
    rep = quality_report(cardio, site(60), min_cell=100)
    assert rep["cohort_rows"] == "<100" and all(c >= 100 for c in _cells(rep))


@given(st.lists(st.integers(0, 40), min_size=2, max_size=12))
def test_partition_never_leaves_exactly_one_hidden_cell(counts: list[int]) -> None:
    cells = suppress_partition(counts, 10)
    hidden = [c for c in cells if isinstance(c, str)]
    # a lone hidden cell is allowed only when it is empty (nothing small to protect)
    assert len(hidden) != 1 or counts[cells.index(hidden[0])] == 0
    for c, n in zip(cells, counts, strict=True):
        assert c == n or isinstance(c, str)
        if n < 10:
            assert isinstance(c, str)


def test_secondary_suppression_marks_the_next_smallest() -> None:
    assert suppress_partition([100, 3, 40], 10) == [100, "<10", SECONDARY]


def test_violations_small_site_and_label(cardio) -> None:
    rep = quality_report(cardio, site(30, label_every=10))
    v = " | ".join(rep["violations"])
    assert "cohort has 30 rows; the contract needs at least 50" in v
    assert "'cvd_event' = 1 in fewer than 10 rows" in v  # 3 positives: never printed
    assert rep["passes"] is False


def test_unit_anomaly_and_missingness_violation(cardio) -> None:
    rep = quality_report(cardio, site(100, chol_unit="zorkmids"))
    assert rep["features"]["total_chol"]["unit_failures"] == {
        "unit not recognised": {"zorkmids": 100}}
    assert rep["features"]["total_chol"]["missing"] == 100
    assert any("'total_chol': 100% of cohort rows have no value" in v
               for v in rep["violations"])


def test_code_system_not_mapped_is_flagged(cardio) -> None:
    r = tomllib.loads(CARDIO.read_text())
    r["features"][7]["codes"] = {"ICD10CM": ["F17*"]}  # smoker only in ICD-10
    c = parse_contract(r)
    rep = quality_report(c, site(100, snomed_smoking=True))
    assert rep["coverage_gaps"] == ["smoker"]
    assert any("'smoker': no event at this site matches" in v for v in rep["violations"])
    r["quality"]["require_code_coverage"] = False
    assert passes_minimum_quality(parse_contract(r), build_features(
        parse_contract(r), site(100, snomed_smoking=True))) == []


def test_report_from_feature_table_equals_from_records(cardio) -> None:
    records = site(80)
    assert quality_report(cardio, records) == quality_report(
        cardio, build_features(cardio, records))


def test_html(cardio) -> None:
    page = render_html(quality_report(cardio, site(30), site="<b>x</b>"))
    assert page.startswith("<!doctype html>") and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "Fails minimum quality" in page


def test_bad_min_cell(cardio) -> None:
    with pytest.raises(ValueError, match="min_cell"):
        quality_report(cardio, site(5), min_cell=0)
