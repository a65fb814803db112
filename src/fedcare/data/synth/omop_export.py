"""Write a hospital as OMOP CDM v5.4 CSV tables.

``person``, ``observation_period``, ``visit_occurrence``, ``measurement`` (standard concept ids,
``measurement_source_value`` = the LOINC code, ``unit_source_value`` as written: mmHg, mg/dL
lipids, mmol/L glucose, umol/L creatinine), ``condition_occurrence`` (standard SNOMED-based
concept ids, ``condition_source_value`` = ICD-10-CM code) and ``drug_exposure`` (ingredient
concept ids, ``drug_source_value`` = RxNorm code).

The demo contract lists no OMOP concept for systolic blood pressure and only atorvastatin's
concept for statins, so this site is read with
``source_vocabulary = {"measurement": "LOINC", "condition": "ICD10CM", "drug": "RXNORM"}``
(:data:`SOURCE_VOCABULARY`, also in ``HospitalExport.adapter_options``).
"""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path
from typing import Any, Final

from fedcare.data.synth.codes import (
    ICD10CM,
    LOINC,
    OMOP_CONDITION,
    OMOP_DRUG,
    OMOP_MEASUREMENT,
    OMOP_UNIT,
    RXNORM,
    UNKNOWN_CODE,
    UNKNOWN_UNIT,
    from_canonical,
)
from fedcare.data.synth.cohort import Patient

UNITS: Final = {"sbp": "mmHg", "total_chol": "mg/dL", "hdl": "mg/dL", "glucose": "mmol/L",
                "creatinine": "umol/L"}
SOURCE_VOCABULARY: Final = {"measurement": "LOINC", "condition": "ICD10CM", "drug": "RXNORM"}
# Reasons as fedcare.data.adapters.omop words them.
OMOP_REJECTS: Final = {"end before start": 2, "missing or unparseable date": 1,
                       "value not a number": 1}
OMOP_KEPT_DEFECTS: Final = {"unknown_unit": 2, "unknown_code": 3}
_EHR: Final = 32817

_COLUMNS: Final = {
    "person": ("person_id", "gender_concept_id", "year_of_birth", "month_of_birth",
               "day_of_birth", "birth_datetime", "race_concept_id", "ethnicity_concept_id",
               "person_source_value", "gender_source_value"),
    "observation_period": ("observation_period_id", "person_id", "observation_period_start_date",
                           "observation_period_end_date", "period_type_concept_id"),
    "visit_occurrence": ("visit_occurrence_id", "person_id", "visit_concept_id",
                         "visit_start_date", "visit_start_datetime", "visit_end_date",
                         "visit_type_concept_id", "visit_source_value"),
    "measurement": ("measurement_id", "person_id", "measurement_concept_id", "measurement_date",
                    "measurement_datetime", "measurement_type_concept_id", "value_as_number",
                    "unit_concept_id", "unit_source_value", "measurement_source_value"),
    "condition_occurrence": ("condition_occurrence_id", "person_id", "condition_concept_id",
                             "condition_start_date", "condition_end_date",
                             "condition_type_concept_id", "condition_source_value"),
    "drug_exposure": ("drug_exposure_id", "person_id", "drug_concept_id",
                      "drug_exposure_start_date", "drug_exposure_end_date",
                      "drug_type_concept_id", "drug_source_value"),
}


def write_omop(folder: Path, patients: list[Patient]) -> list[Path]:
    """Write the six CDM tables into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[tuple[Any, ...]]] = {t: [] for t in _COLUMNS}
    for p in patients:
        _person(p, rows)
    host = next(p for p in patients if p.excluded is not None and p.index is not None)
    _defects(host, rows)
    paths = []
    for table, cols in _COLUMNS.items():
        path = folder / f"{table}.csv"
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(cols)
            w.writerows(rows[table])
        paths.append(path)
    return paths


def _person(p: Patient, rows: dict[str, list[tuple[Any, ...]]]) -> None:
    pid = int(p.pid)
    rows["person"].append((pid, 8532 if p.sex == "female" else 8507, p.birth.year,
                           p.birth.month, p.birth.day, f"{p.birth.isoformat()} 00:00:00", 0, 0,
                           f"MRN{pid}", "F" if p.sex == "female" else "M"))
    days = [*p.encounters, *(d for _, d, _, _ in p.measurements),
            *(d for _, d in p.conditions), *(d for _, d in p.drugs)]
    rows["observation_period"].append((pid, pid, min(days).isoformat(), max(days).isoformat(),
                                       _EHR))
    for k, day in enumerate(p.encounters):
        # visit_start_datetime left empty: a same-day visit's end *date* would otherwise sort
        # before its start *datetime* in adapters that compare the two.
        rows["visit_occurrence"].append((pid * 100 + k, pid, 9202, day.isoformat(), "",
                                         day.isoformat(), _EHR, "OP"))
    for k, (feature, day, value, sec) in enumerate(p.measurements):
        unit = UNITS[feature]
        rows["measurement"].append((
            pid * 100 + k, pid, OMOP_MEASUREMENT[feature], day.isoformat(),
            f"{day.isoformat()} {sec // 3600:02d}:{sec % 3600 // 60:02d}:00", _EHR,
            repr(from_canonical(feature, value, unit)), OMOP_UNIT[unit], unit, LOINC[feature]))
    for k, (kind, onset) in enumerate(p.conditions):
        rows["condition_occurrence"].append((pid * 100 + k, pid, OMOP_CONDITION[kind],
                                             onset.isoformat(), "", _EHR, ICD10CM[kind]))
    for k, (drug, start) in enumerate(p.drugs):
        rows["drug_exposure"].append((pid * 100 + k, pid, OMOP_DRUG[drug], start.isoformat(),
                                      "", 32838, RXNORM[drug]))


def _defects(host: Patient, rows: dict[str, list[tuple[Any, ...]]]) -> None:
    """Deliberately bad rows, all about an excluded person (truth is unaffected)."""
    assert host.index is not None
    pid = int(host.pid)
    old = date(host.index.year - 2, 3, 1).isoformat()
    mid = pid * 100 + 90
    for k in range(2):
        rows["measurement"].append((mid + k, pid, OMOP_MEASUREMENT["total_chol"], old, "", _EHR,
                                    "190.0", 0, UNKNOWN_UNIT, LOINC["total_chol"]))
    for k in range(3):
        rows["measurement"].append((mid + 2 + k, pid, 0, old, "", _EHR, "4.2", OMOP_UNIT["mmol/L"],
                                    "mmol/L", UNKNOWN_CODE))
    rows["measurement"].append((mid + 5, pid, OMOP_MEASUREMENT["hdl"], "2019-02-30", "", _EHR,
                                "50.0", OMOP_UNIT["mg/dL"], "mg/dL", LOINC["hdl"]))
    rows["measurement"].append((mid + 6, pid, OMOP_MEASUREMENT["hdl"], old, "", _EHR, "abc",
                                OMOP_UNIT["mg/dL"], "mg/dL", LOINC["hdl"]))
    for k in range(2):
        rows["condition_occurrence"].append((mid + 7 + k, pid, OMOP_CONDITION["hypertension"],
                                             "2018-05-10", "2017-01-01", _EHR,
                                             ICD10CM["hypertension"]))
