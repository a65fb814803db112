"""Write a hospital as one wide CSV (one row per patient, its own column names) + a mapping.

What a hospital analyst exports from a spreadsheet: the index visit and one earlier visit,
each lab's last value before the index visit with its date (cholesterol, HDL and glucose in
mg/dL, creatinine with a unit column in µmol/L), yes/no history flags with their dates, and
the cardiovascular event (MI or stroke ICD-10-CM code) with its date. The mapping file uses
the ``layout = "wide"`` format of :mod:`fedcare.data.adapters.csv_adapter`.

Only one event per flag fits in a row: a person with both an MI history and a later event
keeps the later one (the label), which is all the contract needs.
"""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path
from typing import Final

import numpy as np

from fedcare.data.synth.codes import ICD10CM, LOINC, RXNORM, UNKNOWN_UNIT, from_canonical
from fedcare.data.synth.cohort import Patient

# feature -> (value column, date column, unit)
LABS: Final = {"sbp": ("sys_bp", "bp_date", "mmHg"),
               "total_chol": ("chol_mgdl", "chol_date", "mg/dL"),
               "hdl": ("hdl_mgdl", "hdl_date", "mg/dL"),
               "glucose": ("glucose_mgdl", "glucose_date", "mg/dL"),
               "creatinine": ("creat", "creat_date", "µmol/L")}
# Reasons as fedcare.data.adapters.csv_adapter words them.
WIDE_REJECTS: Final = {"missing or unparseable date": 1, "value not a number": 1,
                       "flag value not yes/no": 1, "missing person id": 1}
WIDE_KEPT_DEFECTS: Final = {"unknown_unit": 2}

_HEADER: Final = ("patient_no", "dob", "gender", "first_visit", "prev_visit",
                  "sys_bp", "bp_date", "chol_mgdl", "chol_date", "hdl_mgdl", "hdl_date",
                  "glucose_mgdl", "glucose_date", "creat", "creat_unit", "creat_date",
                  "smoker", "smoker_since", "diabetic", "diabetes_since", "statin",
                  "statin_start", "statin_rxnorm", "cvd", "cvd_code", "cvd_date")

MAPPING: Final = f"""# Column mapping of the wide export (fedcare.data.adapters.csv_adapter).
layout = "wide"
person_id = "patient_no"
birth_date = "dob"
sex = "gender"
sex_values = {{ F = "female", M = "male" }}

[[columns]]
column = "first_visit"
domain = "encounter"
code = "visit"

[[columns]]
column = "prev_visit"
domain = "encounter"
code = "visit"

[[columns]]
column = "sys_bp"
domain = "measurement"
system = "LOINC"
code = "{LOINC['sbp']}"
unit = "mmHg"
date = "bp_date"

[[columns]]
column = "chol_mgdl"
domain = "measurement"
system = "LOINC"
code = "{LOINC['total_chol']}"
unit = "mg/dL"
date = "chol_date"

[[columns]]
column = "hdl_mgdl"
domain = "measurement"
system = "LOINC"
code = "{LOINC['hdl']}"
unit = "mg/dL"
date = "hdl_date"

[[columns]]
column = "glucose_mgdl"
domain = "measurement"
system = "LOINC"
code = "{LOINC['glucose']}"
unit = "mg/dL"
date = "glucose_date"

[[columns]]
column = "creat"
domain = "measurement"
system = "LOINC"
code = "{LOINC['creatinine']}"
unit_column = "creat_unit"
date = "creat_date"

[[columns]]
column = "smoker"
domain = "condition"
system = "ICD10CM"
code = "{ICD10CM['smoker']}"
date = "smoker_since"

[[columns]]
column = "diabetic"
domain = "condition"
system = "ICD10CM"
code = "{ICD10CM['diabetes']}"
date = "diabetes_since"

[[columns]]
column = "statin"
domain = "drug"
system = "RXNORM"
code = "{RXNORM['atorvastatin']}"
date = "statin_start"

[[columns]]
column = "cvd"
domain = "condition"
system = "ICD10CM"
code = "{ICD10CM['mi']}"
date = "cvd_date"
"""


def write_wide(folder: Path, patients: list[Patient]) -> tuple[Path, Path]:
    """Write ``patients.csv`` and ``mapping.toml`` into ``folder``; return both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    hosts = [p for p in patients if p.excluded is not None and p.index is not None]
    bad = {hosts[0].pid: "date", hosts[1].pid: "value", hosts[2].pid: "flag",
           hosts[3].pid: "unit"}
    table = folder / "patients.csv"
    with open(table, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(_HEADER)
        for p in patients:
            row = _row(p)
            defect = bad.get(p.pid)
            if defect == "date":
                row["chol_date"] = "2019-02-30"
            elif defect == "value":
                row["glucose_mgdl"] = "n/a"
            elif defect == "flag":
                row["smoker"] = "maybe"
            elif defect == "unit":
                row["creat_unit"] = UNKNOWN_UNIT
            w.writerow([row[c] for c in _HEADER])
            if defect == "unit":  # the second unknown unit: a re-exported row with a new id
                row["patient_no"] = str(int(p.pid) + 900_000)
                w.writerow([row[c] for c in _HEADER])
        orphan = _row(hosts[0])
        orphan["patient_no"] = ""
        w.writerow([orphan[c] for c in _HEADER])
    mapping = folder / "mapping.toml"
    mapping.write_text(MAPPING, encoding="utf-8")
    return table, mapping


def _row(p: Patient) -> dict[str, str]:
    assert p.features is not None
    row = dict.fromkeys(_HEADER, "")
    row.update(patient_no=p.pid, dob=p.birth.isoformat(), gender="F" if p.sex == "female"
               else "M")
    visits = sorted(p.encounters)
    if p.index is not None:
        row["first_visit"] = p.index.isoformat()
        earlier = [d for d in visits if d < p.index]
        row["prev_visit"] = earlier[0].isoformat() if earlier else ""
    else:  # no 2020 visit: the hospital exports its first visits (2019, 2021)
        row["first_visit"] = visits[-1].isoformat()
        row["prev_visit"] = visits[0].isoformat()
    for feature, (col, date_col, unit) in LABS.items():
        value = p.features[feature]
        if not np.isfinite(value):
            continue
        day = _truth_day(p, feature)
        row[col] = repr(from_canonical(feature, value, unit))
        row[date_col] = day.isoformat()
        if feature == "creatinine":
            row["creat_unit"] = unit
    _flag(row, "smoker", "smoker_since", [d for k, d in p.conditions if k == "smoker"])
    _flag(row, "diabetic", "diabetes_since", [d for k, d in p.conditions if k == "diabetes"])
    _flag(row, "statin", "statin_start", [d for _, d in p.drugs])
    cvd = sorted((d, k) for k, d in p.conditions if k in ("mi", "stroke"))
    if cvd:
        after = [e for e in cvd if p.index is not None and e[0] > p.index]
        day, kind = after[0] if after else cvd[-1]
        row.update(cvd="Y", cvd_date=day.isoformat(), cvd_code=ICD10CM[kind])
    else:
        row["cvd"] = "N"
    if p.drugs:
        row["statin_rxnorm"] = RXNORM[p.drugs[0][0]]
    return row


def _flag(row: dict[str, str], col: str, date_col: str, days: list[date]) -> None:
    row[col] = "Y" if days else "N"
    row[date_col] = min(days).isoformat() if days else ""


def _truth_day(p: Patient, feature: str) -> date:
    """Date of the truth value: the generator writes it first among the feature's values."""
    return next(day for f, day, _, _ in p.measurements if f == feature)
