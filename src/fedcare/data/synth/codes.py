"""Codes and units each synthetic hospital writes, and the unit conversions it uses.

The conversions are implemented here independently of :mod:`fedcare.data.harmonize` (plain
arithmetic with the contract's molar masses), so the end-to-end test compares two
implementations rather than one with itself.
"""

from __future__ import annotations

from typing import Final

# canonical unit -> source unit factor: source_value = canonical_value * factor
MOLAR_MASS: Final = {"cholesterol": 386.65, "glucose": 180.16, "creatinine": 113.12}
ANALYTE: Final = {"total_chol": "cholesterol", "hdl": "cholesterol", "glucose": "glucose",
                  "creatinine": "creatinine"}

LOINC: Final = {"sbp": "8480-6", "total_chol": "2093-3", "hdl": "2085-9", "glucose": "2345-7",
                "creatinine": "2160-0"}
OMOP_MEASUREMENT: Final = {"sbp": 3004249, "total_chol": 3027114, "hdl": 3007070,
                           "glucose": 3004501, "creatinine": 3016723}
OMOP_UNIT: Final = {"mmHg": 8876, "mg/dL": 8840, "mmol/L": 8753, "umol/L": 8749}

SNOMED_CONDITION: Final = {"smoker": "77176002", "diabetes": "44054006", "mi": "22298006",
                           "stroke": "230690007", "hypertension": "38341003"}
ICD10CM: Final = {"smoker": "F17.210", "diabetes": "E11.9", "mi": "I21.4", "stroke": "I63.9",
                  "hypertension": "I10"}
OMOP_CONDITION: Final = {"smoker": 4209423, "diabetes": 201826, "mi": 4329847,
                         "stroke": 443454, "hypertension": 320128}
RXNORM: Final = {"atorvastatin": "83367", "simvastatin": "36567", "rosuvastatin": "301542"}
OMOP_DRUG: Final = {"atorvastatin": 1545958, "simvastatin": 1539403, "rosuvastatin": 1510813}

UNKNOWN_UNIT: Final = "mg/furlong"
UNKNOWN_CODE: Final = "XLAB-77"


def from_canonical(feature: str, value: float, unit: str) -> float:
    """``value`` (canonical unit of ``feature``) expressed in ``unit``."""
    if unit in ("mm[Hg]", "mmHg", "mmol/L", "umol/L", "µmol/L"):
        return value
    if unit == "mg/dL":
        mass = MOLAR_MASS[ANALYTE[feature]]
        # mmol/L -> mg/dL: * M / 10; umol/L -> mg/dL: * M / 10_000
        return value * mass / (10_000.0 if feature == "creatinine" else 10.0)
    raise ValueError(f"no conversion of {feature} to {unit!r}")
