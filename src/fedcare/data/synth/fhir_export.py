"""Write a hospital as a FHIR R4 bulk export: one NDJSON file per resource type.

Conditions are coded in SNOMED CT, labs in LOINC (half the blood pressures as a panel
85354-9 whose systolic *component* carries the value, the other half coded LOINC + SNOMED),
lipids in mmol/L, glucose and creatinine in mg/dL. Every resource is valid R4B
(``fhir.resources``), except the deliberately bad ones listed in :data:`FHIR_REJECTS`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any, Final

from fedcare.data.adapters import fhir as reasons
from fedcare.data.synth.codes import (
    LOINC,
    RXNORM,
    SNOMED_CONDITION,
    UNKNOWN_CODE,
    UNKNOWN_UNIT,
    from_canonical,
)
from fedcare.data.synth.cohort import Patient

UNITS: Final = {"sbp": "mm[Hg]", "total_chol": "mmol/L", "hdl": "mmol/L", "glucose": "mg/dL",
                "creatinine": "mg/dL"}
_LOINC_URI: Final = "http://loinc.org"
_SNOMED_URI: Final = "http://snomed.info/sct"
_UCUM: Final = "http://unitsofmeasure.org"

# Reject reason -> number of deliberately bad resources the export holds.
FHIR_REJECTS: Final = {reasons.MALFORMED_JSON: 2, reasons.NO_VALUE: 1,
                       reasons.MISSING_SUBJECT: 1, reasons.END_BEFORE_START: 2,
                       reasons.BAD_DATE: 1, reasons.UNSUPPORTED: 1}
# Defects the adapter keeps (harmonization or the feature builder deals with them).
FHIR_KEPT_DEFECTS: Final = {"unknown_unit": 2, "unknown_code": 3}


def write_fhir(folder: Path, patients: list[Patient]) -> list[Path]:
    """Write the export into ``folder``; return the NDJSON files, one per resource type."""
    folder.mkdir(parents=True, exist_ok=True)
    host = next(p for p in patients if p.excluded is not None and p.index is not None)
    files: dict[str, list[str]] = {t: [] for t in ("Patient", "Encounter", "Observation",
                                                   "Condition", "MedicationRequest",
                                                   "Organization")}
    for p in patients:
        files["Patient"].append(_dumps(_patient(p)))
        for k, day in enumerate(p.encounters):
            files["Encounter"].append(_dumps(_encounter(p, k, day)))
        for k, (feature, day, value, sec) in enumerate(p.measurements):
            files["Observation"].append(_dumps(_observation(p, k, feature, day, value, sec)))
        for k, (kind, onset) in enumerate(p.conditions):
            files["Condition"].append(_dumps(_condition(p.pid, f"c{p.pid}-{k}", kind, onset)))
        for k, (drug, start) in enumerate(p.drugs):
            files["MedicationRequest"].append(_dumps(_medication(p.pid, k, drug, start)))
    for rtype, line in _defects(host):
        files[rtype].append(line)
    paths = []
    for rtype, lines in files.items():
        path = folder / f"{rtype}.ndjson"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def expected_source_counts(patients: list[Patient]) -> Counter[str]:
    """Resources per type the export holds (malformed lines are not resources)."""
    c: Counter[str] = Counter()
    for p in patients:
        c["Patient"] += 1
        c["Encounter"] += len(p.encounters)
        c["Observation"] += len(p.measurements)
        c["Condition"] += len(p.conditions)
        c["MedicationRequest"] += len(p.drugs)
    c["Observation"] += 1 + 1 + 1 + 2 + 3  # no value, no subject, bad date, 2 units, 3 codes
    c["Condition"] += 2
    c["Organization"] += 1
    return c


def _dumps(res: dict[str, Any]) -> str:
    return json.dumps(res, separators=(",", ":"), ensure_ascii=False)


def _ref(pid: str) -> dict[str, str]:
    return {"reference": f"Patient/{pid}"}


def _patient(p: Patient) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": p.pid, "gender": p.sex,
            "birthDate": p.birth.isoformat()}


def _encounter(p: Patient, k: int, day: date) -> dict[str, Any]:
    return {"resourceType": "Encounter", "id": f"e{p.pid}-{k}", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                      "code": "AMB"},
            "subject": _ref(p.pid),
            "period": {"start": f"{day.isoformat()}T08:00:00Z",
                       "end": f"{day.isoformat()}T08:30:00Z"}}


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": _UCUM, "code": unit}


def _observation(p: Patient, k: int, feature: str, day: date, value: float,
                 sec: int) -> dict[str, Any]:
    unit = UNITS[feature]
    q = _quantity(from_canonical(feature, value, unit), unit)
    when = f"{day.isoformat()}T{sec // 3600:02d}:{sec % 3600 // 60:02d}:00Z"
    res: dict[str, Any] = {"resourceType": "Observation", "id": f"o{p.pid}-{k}",
                           "status": "final", "subject": _ref(p.pid), "effectiveDateTime": when}
    if feature == "sbp" and k % 2 == 0:
        res["code"] = {"coding": [{"system": _LOINC_URI, "code": "85354-9"}],
                       "text": "Blood pressure panel"}
        res["component"] = [
            {"code": {"coding": [{"system": _LOINC_URI, "code": "8480-6"}]}, "valueQuantity": q},
            {"code": {"coding": [{"system": _LOINC_URI, "code": "8462-4"}]},
             "valueQuantity": _quantity(80.0, "mm[Hg]")}]
        return res
    codings = [{"system": _LOINC_URI, "code": LOINC[feature]}]
    if feature == "sbp":
        codings.insert(0, {"system": _SNOMED_URI, "code": "271649006"})
    res["code"] = {"coding": codings}
    res["valueQuantity"] = q
    return res


def _condition(pid: str, rid: str, kind: str, onset: date,
               abatement: date | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Condition", "id": rid,
        "clinicalStatus": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
            "code": "active" if abatement is None else "resolved"}]},
        "code": {"coding": [{"system": _SNOMED_URI, "code": SNOMED_CONDITION[kind]}]},
        "subject": _ref(pid), "onsetDateTime": onset.isoformat()}
    if abatement is not None:
        res["abatementDateTime"] = abatement.isoformat()
    return res


def _medication(pid: str, k: int, drug: str, start: date) -> dict[str, Any]:
    return {"resourceType": "MedicationRequest", "id": f"m{pid}-{k}", "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {"coding": [{
                "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                "code": RXNORM[drug]}]},
            "subject": _ref(pid), "authoredOn": start.isoformat()}


def _defects(host: Patient) -> Iterator[tuple[str, str]]:
    """The deliberately bad records, all about an excluded person (so truth is unaffected)."""
    assert host.index is not None
    old = date(host.index.year - 2, 3, 1)
    yield "Observation", '{"resourceType":"Observation","status":"final",'  # cut short
    yield "Observation", "not json at all"
    no_value = _observation(host, 900, "glucose", old, 5.0, 36000)
    del no_value["valueQuantity"]
    no_value["dataAbsentReason"] = {"text": "sample haemolysed"}
    yield "Observation", _dumps(no_value)
    no_subject = _observation(host, 901, "glucose", old, 5.0, 36000)
    del no_subject["subject"]
    yield "Observation", _dumps(no_subject)
    bad_date = _observation(host, 902, "hdl", old, 1.0, 36000)
    bad_date["effectiveDateTime"] = "2019-02-30T10:00:00Z"
    yield "Observation", _dumps(bad_date)
    for k in range(2):
        obs = _observation(host, 910 + k, "total_chol", old, 5.0, 36000)
        obs["valueQuantity"] = _quantity(5.0, UNKNOWN_UNIT)
        yield "Observation", _dumps(obs)
    for k in range(3):
        obs = _observation(host, 920 + k, "glucose", old, 5.0, 36000)
        obs["code"] = {"coding": [{"system": "http://hospital.example/lab", "code": UNKNOWN_CODE}]}
        yield "Observation", _dumps(obs)
    for k in range(2):
        yield "Condition", _dumps(_condition(host.pid, f"c{host.pid}-bad{k}", "hypertension",
                                             date(2018, 5, 10), abatement=date(2017, 1, 1)))
    yield "Organization", _dumps({"resourceType": "Organization", "id": "hospital-1",
                                  "name": "Hospital 1"})
