"""Clinical source adapters (CSV/Parquet, OMOP CDM, FHIR) -> :class:`CanonicalRecords`.

Only the canonical format is imported here; each adapter is imported from its own module so
that a site without DuckDB or FHIR models installed still loads the others.
"""

from __future__ import annotations

from fedcare.data.adapters.canonical import (
    DOMAINS,
    EVENT_COLUMNS,
    PERSON_COLUMNS,
    SEXES,
    SYSTEMS,
    CanonicalRecords,
)

__all__ = [
    "DOMAINS",
    "EVENT_COLUMNS",
    "PERSON_COLUMNS",
    "SEXES",
    "SYSTEMS",
    "CanonicalRecords",
]
