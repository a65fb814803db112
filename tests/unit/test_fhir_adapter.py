from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from fedcare.core.errors import ConfigError, DataError
from fedcare.data.adapters import fhir
from fedcare.data.adapters.fhir import load_fhir

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def _patient(pid: str = "p1", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "gender": "female",
            "birthDate": "1960-02-03", **extra}


def _obs(pid: str = "p1", code: str = "2093-3", value: Any = 5.2, unit: str = "mmol/L",
         **extra: Any) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "Observation", "status": "final",
                           "code": {"coding": [{"system": LOINC, "code": code}]},
                           "subject": {"reference": f"Patient/{pid}"},
                           "effectiveDateTime": "2019-05-01T10:30:00Z",
                           "valueQuantity": {"value": value, "unit": unit,
                                             "system": "http://unitsofmeasure.org",
                                             "code": unit}}
    res.update(extra)
    return res


def _cond(pid: str = "p1", system: str = ICD, code: str = "E11.9", **extra: Any
          ) -> dict[str, Any]:
    return {"resourceType": "Condition", "code": {"coding": [{"system": system, "code": code}]},
            "subject": {"reference": f"Patient/{pid}"}, "onsetDateTime": "2015-06-01", **extra}


def _ndjson(tmp_path: Path, resources: list[Any], name: str = "data.ndjson") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in resources)
                    + "\n")
    return path


def _load(tmp_path: Path, resources: list[Any], validate: str = "all") -> Any:
    return load_fhir([_ndjson(tmp_path, resources)], validate=validate)


def test_every_supported_resource_type_becomes_canonical_records(tmp_path: Path) -> None:
    resources = [
        _patient("p1"), _patient("p2", gender="male", birthDate="1950"),
        _obs("p1"),
        _cond("p1"),
        _cond("p2", system=SNOMED, code="22298006", onsetDateTime=None,
              recordedDate="2021-03-04", abatementDateTime="2021-05-01"),
        {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
         "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "83367"}]},
         "subject": {"reference": "Patient/p1"}, "authoredOn": "2018-01-02"},
        {"resourceType": "MedicationStatement", "status": "active",
         "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "36567"}]},
         "subject": {"reference": "Patient/p2"},
         "effectivePeriod": {"start": "2017-01-01", "end": "2018-01-01"}},
        {"resourceType": "Encounter", "status": "finished",
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
         "subject": {"reference": "Patient/p1"},
         "period": {"start": "2020-03-04T09:00:00+01:00", "end": "2020-03-04T10:00:00+01:00"}},
    ]
    resources[4].pop("onsetDateTime")

    rec = _load(tmp_path, resources)

    assert rec.persons["person_id"].tolist() == ["p1", "p2"]
    assert rec.persons["sex"].tolist() == ["female", "male"]
    assert rec.persons["birth_date"].tolist() == [pd.Timestamp("1960-02-03"),
                                                  pd.Timestamp("1950-01-01")]
    ev = rec.events.set_index("domain")
    m = ev.loc["measurement"]
    assert (m["system"], m["code"], m["value"], m["unit"]) == ("LOINC", "2093-3", 5.2, "mmol/L")
    assert m["start"] == pd.Timestamp("2019-05-01 10:30:00")
    conds = rec.events[rec.events["domain"] == "condition"].set_index("person_id")
    assert conds.loc["p1", "system"] == "ICD10CM" and conds.loc["p1", "code"] == "E11.9"
    assert conds.loc["p2", "start"] == pd.Timestamp("2021-03-04")  # recordedDate fallback
    assert conds.loc["p2", "end"] == pd.Timestamp("2021-05-01")   # abatement
    assert math.isnan(conds.loc["p1", "value"]) and conds.loc["p1", "unit"] == ""
    drugs = rec.events[rec.events["domain"] == "drug"].set_index("person_id")
    assert drugs.loc["p1", "code"] == "83367" and drugs.loc["p1", "system"] == "RXNORM"
    assert drugs.loc["p2", "end"] == pd.Timestamp("2018-01-01")
    enc = ev.loc["encounter"]
    assert enc["start"] == pd.Timestamp("2020-03-04 09:00")  # local wall-clock time kept
    assert enc["code"] == "AMB" and enc["system"] == "LOCAL"
    assert rec.rejects == {}
    assert rec.source_counts["Patient"] == 2 and rec.source_counts["Encounter"] == 1


def test_bundle_with_urn_references_reads_like_ndjson(tmp_path: Path) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:aaa", "resource": _patient("aaa")},
        {"fullUrl": "urn:uuid:o1", "resource": _obs("x", subject={"reference": "urn:uuid:aaa"})},
        {"fullUrl": "urn:uuid:m1", "resource": {
            "resourceType": "Medication", "id": "m1",
            "code": {"coding": [{"system": RXNORM, "code": "301542"}]}}},
        {"resource": {"resourceType": "MedicationRequest", "status": "active",
                      "intent": "order", "medicationReference": {"reference": "urn:uuid:m1"},
                      "subject": {"reference": "urn:uuid:aaa"}, "authoredOn": "2019-01-01"}},
    ]}
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle, indent=2))

    rec = load_fhir([path], validate="all")

    assert rec.persons["person_id"].tolist() == ["aaa"]
    assert sorted(rec.events["domain"]) == ["drug", "measurement"]
    assert rec.events.set_index("domain").loc["drug", "code"] == "301542"
    assert rec.source_counts["Bundle"] == 1 and rec.source_counts["Medication"] == 1


def test_blood_pressure_panel_components_and_coding_preference(tmp_path: Path) -> None:
    panel = _obs(code="85354-9")
    del panel["valueQuantity"]
    panel["component"] = [
        {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
         "valueQuantity": {"value": 131, "unit": "mmHg"}},
        {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
         "valueQuantity": {"value": 82, "unit": "mmHg"}}]
    double = _obs(code="8480-6", value=140, unit="mm[Hg]")
    double["code"]["coding"].insert(0, {"system": SNOMED, "code": "271649006"})

    rec = _load(tmp_path, [_patient(), panel, double])

    got = sorted(zip(rec.events["code"], rec.events["value"], rec.events["unit"], strict=True))
    assert got == [("8462-4", 82.0, "mmHg"), ("8480-6", 131.0, "mmHg"),
                   ("8480-6", 140.0, "mm[Hg]")]  # LOINC preferred, one event per resource


def test_gzip_and_folder_inputs(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    with gzip.open(folder / "Patient.ndjson.gz", "wt") as fh:
        fh.write(json.dumps(_patient()) + "\n")
    _ndjson(folder, [_obs()], "Observation.ndjson")
    (folder / "README.txt").write_text("not read")

    rec = load_fhir(folder)

    assert len(rec.persons) == 1 and len(rec.events) == 1


@pytest.mark.parametrize("mode", ["all", "sample", "none"])
def test_each_bad_resource_is_counted_by_reason_not_raised(tmp_path: Path, mode: str) -> None:
    no_value = _obs()
    del no_value["valueQuantity"]
    text_value = _obs(value="high")
    no_subject = _obs()
    del no_subject["subject"]
    group_subject = _obs(subject={"reference": "Group/7"})
    no_date = _obs()
    del no_date["effectiveDateTime"]
    bad_date = _obs(effectiveDateTime="2019-02-30")
    no_code = _obs()
    no_code["code"] = {"text": "cholesterol"}
    resources = [
        _patient(), _patient(), {"resourceType": "Patient", "gender": "male"},
        "{not json", no_value, text_value, no_subject, group_subject, no_date, bad_date,
        no_code, _obs("ghost"), _obs("ghost"),
        _cond(abatementDateTime="2010-01-01"),
        _cond(verificationStatus={"coding": [{"code": "entered-in-error"}]}),
        {"resourceType": "Practitioner", "id": "dr"}, {"no": "resourceType"}, [1, 2],
        {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
         "medicationReference": {"reference": "Medication/none"},
         "subject": {"reference": "Patient/p1"}, "authoredOn": "2019-01-01"},
        _obs(),  # the one good event
    ]

    rec = _load(tmp_path, resources, validate=mode)

    assert len(rec.events) == 1 and len(rec.persons) == 1
    assert rec.rejects == {
        fhir.DUPLICATE_PATIENT: 1, fhir.MISSING_ID: 1, fhir.MALFORMED_JSON: 1,
        fhir.NO_VALUE: 2, fhir.MISSING_SUBJECT: 1, fhir.NOT_A_PATIENT: 1,
        fhir.MISSING_DATE: 1, fhir.BAD_DATE: 1, fhir.MISSING_CODE: 1,
        fhir.UNKNOWN_SUBJECT: 2, fhir.END_BEFORE_START: 1, fhir.RETRACTED: 1,
        fhir.UNSUPPORTED: 1, fhir.NOT_A_RESOURCE: 2, fhir.UNRESOLVED_MEDICATION: 1}


def test_validation_catches_what_the_fast_path_does_not_read(tmp_path: Path) -> None:
    off_spec = _obs(status=17)  # status is not read by the fast path, but must be a code
    resources = [_patient(), off_spec]

    assert len(_load(tmp_path, resources, validate="none").events) == 1
    rec = _load(tmp_path, resources, validate="all")
    assert rec.rejects == {fhir.INVALID: 1} and len(rec.events) == 0
    assert _load(tmp_path, resources, validate="sample").rejects == {fhir.INVALID: 1}


def test_sample_mode_validates_first_n_then_one_in_k(tmp_path: Path) -> None:
    n = fhir.SAMPLE_FIRST + 2 * fhir.SAMPLE_EVERY
    good = [_obs(value=float(i)) for i in range(n)]
    # off-spec resources at sampled and unsampled positions (counted among accepted ones)
    good[fhir.SAMPLE_FIRST + 1]["status"] = 17  # not sampled -> passes
    good[fhir.SAMPLE_FIRST + fhir.SAMPLE_EVERY]["status"] = 17  # sampled -> rejected

    rec = _load(tmp_path, [_patient(), *good], validate="sample")

    assert rec.rejects == {fhir.INVALID: 1}
    assert len(rec.events) == n - 1


@pytest.mark.parametrize("content", ["", "hello, world\n", '{"a": 1}\n', "[1, 2, 3]",
                                     "{broken\n{also broken\n"])
def test_a_file_that_is_not_fhir_is_a_data_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(DataError, match=r"x\.json"):
        load_fhir([path])


def test_missing_inputs_and_bad_mode_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_fhir([tmp_path / "nope.ndjson"])
    with pytest.raises(DataError, match="no FHIR files"):
        load_fhir([])
    with pytest.raises(DataError, match="holds no FHIR files"):
        load_fhir(tmp_path)
    with pytest.raises(ConfigError, match="validate"):
        load_fhir([_ndjson(tmp_path, [_patient()])], validate="some")
    binary = tmp_path / "b.ndjson.gz"
    binary.write_bytes(b"\x00\x01 not gzip")
    with pytest.raises(DataError, match="cannot read"):
        load_fhir([binary])


def test_patient_without_birth_date_is_kept_with_nat(tmp_path: Path) -> None:
    rec = _load(tmp_path, [{"resourceType": "Patient", "id": "p9"}])
    assert rec.persons["birth_date"].isna().all() and rec.persons["sex"].tolist() == ["unknown"]


def test_non_finite_values_are_not_values(tmp_path: Path) -> None:
    path = tmp_path / "nan.ndjson"
    path.write_text(json.dumps(_patient()) + "\n"
                    + json.dumps(_obs()).replace("5.2", "NaN") + "\n")
    rec = load_fhir([path], validate="none")
    assert rec.rejects == {fhir.NO_VALUE: 1}


# -- review fixes: by-day order, year bounds, components, birth dates ---------------------------


def _encounter(start: str, end: str | None) -> dict[str, Any]:
    period = {"start": start} if end is None else {"start": start, "end": end}
    return {"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                      "code": "AMB"},
            "subject": {"reference": "Patient/p1"}, "period": period}


@pytest.mark.parametrize("mode", ["all", "none"])
def test_period_with_datetime_start_and_same_day_date_end_is_kept(tmp_path: Path,
                                                                   mode: str) -> None:
    rec = _load(tmp_path, [_patient(), _encounter("2020-03-04T10:00:00+01:00", "2020-03-04"),
                           _encounter("2020-03-05T10:00:00+01:00", "2020-03-04")], mode)
    assert len(rec.events) == 1 and rec.rejects == {fhir.END_BEFORE_START: 1}
    assert rec.events["start"].iloc[0] == pd.Timestamp("2020-03-04 10:00")  # wall clock


@pytest.mark.parametrize("mode", ["all", "none"])
def test_out_of_range_dates_are_counted(tmp_path: Path, mode: str) -> None:
    rec = _load(tmp_path, [_patient(), _encounter("2020-01-01", "9999-12-31"),
                           _encounter("1066-10-14", None), _cond(onsetDateTime="9999-12-31")],
                mode)
    assert len(rec.events) == 1 and rec.events["end"].isna().all()
    assert rec.rejects == {fhir.DATE_OUT_OF_RANGE: 2, fhir.END_OUT_OF_RANGE: 1}


@pytest.mark.parametrize("mode", ["all", "sample", "none"])
def test_bad_component_is_counted_and_the_rest_kept(tmp_path: Path, mode: str) -> None:
    bp = _obs(code="85354-9")
    del bp["valueQuantity"]
    bp["component"] = [
        {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
         "valueQuantity": {"value": 120, "unit": "mmHg"}},
        {"code": {"text": "diastolic"}, "valueQuantity": {"value": 80, "unit": "mmHg"}},
        {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
         "valueQuantity": {"unit": "mmHg"}},
    ]
    rec = _load(tmp_path, [_patient(), bp], mode)
    assert rec.events["code"].tolist() == ["8480-6"]
    assert rec.rejects == {fhir.BAD_COMPONENT: 2}


@pytest.mark.parametrize("mode", ["all", "sample", "none"])
def test_patient_with_malformed_birth_date_is_kept(tmp_path: Path, mode: str) -> None:
    rec = _load(tmp_path, [_patient("p1", birthDate="03/02/1960"),
                           _patient("p2", birthDate="1066-01-01"), _obs("p1")], mode)
    assert rec.persons["person_id"].tolist() == ["p1", "p2"]
    assert rec.persons["birth_date"].isna().all() and len(rec.events) == 1
    assert rec.rejects == {fhir.BAD_BIRTH_DATE: 1, fhir.BIRTH_OUT_OF_RANGE: 1}
