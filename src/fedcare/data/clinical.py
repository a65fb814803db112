"""A site's clinical table: its own export, harmonized to a data contract, checked, written.

One function builds it for every caller -- the node serving a dataset, ``fedcare data check``
and ``fedcare data build`` at the site, and a simulation over several sites' exports -- so the
table a study trains on in simulation is the table the same site builds in deployment.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedcare.core.errors import DataError
from fedcare.data.features import FeatureTable


@dataclass
class ClinicalTable:
    """A clinical dataset as the site built it: the feature table, its shareable quality
    report and the contract's minimum-quality violations (non-empty: the site refuses to
    train on it)."""

    table: FeatureTable
    contract_hash: str
    features: list[str]
    report: dict[str, Any]
    violations: list[str]
    site: str = ""

    @property
    def rows(self) -> int:
        return len(self.table.frame)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Features (float32, the contract's column order) and label (int64) of every row,
        in the table's row order: what a study splits into train and test."""
        frame = self.table.frame
        return (frame[self.features].to_numpy(np.float32),
                frame[self.table.label].to_numpy().astype(np.int64))


def build_clinical_table(source: Path, contract_path: Path, site: str | None = None, *,
                         min_cell: int = 10) -> ClinicalTable:
    """Run the site's adapter (FHIR / OMOP / CSV) named by its source file, harmonize to the
    contract's feature table and check it against the contract's quality rules. Only the
    suppressed quality report may leave the site. ``site`` defaults to the source file's."""
    from fedcare.data.adapters.source import load_source
    from fedcare.data.contract import contract_hash, feature_columns, load_contract
    from fedcare.data.features import build_features
    from fedcare.data.quality import passes_minimum_quality, quality_report, to_json

    contract = load_contract(contract_path)
    src = load_source(source)
    name = site or src.site
    records = src.load()
    table = build_features(contract, records, site_mapping=src.site_mapping(),
                           index_date=src.index_date)
    report = quality_report(contract, table, min_cell=min_cell, site=name)
    return ClinicalTable(table, contract_hash(contract), feature_columns(contract),
                         json.loads(to_json(report)), passes_minimum_quality(contract, table),
                         name)


def write_table(built: ClinicalTable, path: Path) -> None:
    """Write the feature table (``person_id`` index, the contract's features, the label) as
    Parquet, readable by the site's own account only: it holds one row per patient and is
    meant to stay where it was built."""
    from fedcare.core.files import PRIVATE_FILE_MODE, atomic_write

    buf = io.BytesIO()
    try:
        built.table.frame.to_parquet(buf, index=True)
    except (ImportError, ValueError) as exc:
        raise DataError(f"cannot write the table as Parquet: {exc}", site=built.site) from exc
    atomic_write(Path(path), buf.getvalue(), mode=PRIVATE_FILE_MODE)
