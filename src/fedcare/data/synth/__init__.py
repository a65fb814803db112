"""Synthetic multi-hospital clinical data with a known cardiovascular risk model.

:func:`generate_hospitals` writes N hospitals, each in its own export format (FHIR bulk NDJSON,
OMOP CDM v5.4 CSV, a wide CSV with a column mapping), and returns for each the ground truth:
the feature table harmonization must produce under the demo contract
(``examples/contracts/cardio.toml``), the true risk model and the reject counts the adapters
must report for the records deliberately broken.
"""

from __future__ import annotations

from fedcare.data.synth.generate import HospitalExport, generate_hospitals
from fedcare.data.synth.model import FEATURES, LABEL, TrueRiskModel

__all__ = ["FEATURES", "LABEL", "HospitalExport", "TrueRiskModel", "generate_hospitals"]
