"""Turn a networked study's data section plus the site's own file into :class:`SiteData`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fedcare.config import FederatedData, contract_matches
from fedcare.core.dataset import SiteData, TaskType, few_rows_warning
from fedcare.core.errors import DataError
from fedcare.core.seeds import site_round_seed
from fedcare.data.clinical import ClinicalTable, build_clinical_table

__all__ = ["ClinicalTable", "build_clinical_table", "build_site_data", "clinical_site_data"]
log = logging.getLogger("fedcare.node")


def build_site_data(data: FederatedData, site: str, site_index: int, seed: int,
                    path: Path, test_path: Path | None = None) -> SiteData:
    """The site's table; with ``test_path`` (the dataset's fixed test file in site.toml) the
    site trains on every row of ``path`` and tests on that file instead of a random split.
    A study that imputes or encodes categories keeps the rows raw (missing values, level
    codes): they are encoded with the federation's fill values and level list once those
    arrive with the normalizer."""
    from fedcare.data.prepare import Columns, load_raw_table, with_columns
    from fedcare.data.tabular import load_table

    if Columns.of(data, data.features).active:
        if test_path is not None:
            raise DataError("a fixed test file (test_path) cannot be combined with a study "
                            "that imputes or encodes categories yet", site=site)
        raw = load_raw_table(path, label=data.label, features=data.features, site=site,
                             data=data)
        for reason, n in raw.site.dropped.items():
            log.warning("site %s: %d row(s) of %s dropped (%s)", site, n, path, reason)
        site_data = _split_site(data, site, site_index, seed, raw.x,
                                _labels(data, raw.y, site, path))
        return with_columns(site_data, raw.site)
    table = load_table(path, label=data.label, features=data.features, site=site)
    y = _labels(data, table.y, site, path)
    if test_path is None:
        return _split_site(data, site, site_index, seed, table.x, y)
    test = load_table(test_path, label=data.label, features=data.features, site=site)
    return SiteData(site, np.ascontiguousarray(table.x, np.float32), y,
                    np.ascontiguousarray(test.x, np.float32),
                    _labels(data, test.y, site, test_path), tuple(data.features),
                    TaskType(data.task), _classes(data),
                    test_split=f"fixed file {Path(test_path).name}")


def _classes(data: FederatedData) -> int:
    return data.classes if data.task == TaskType.MULTICLASS.value else 2


def _labels(data: FederatedData, y: np.ndarray, site: str, path: Path) -> np.ndarray:
    """A networked study's labels: class ids 0..classes-1, or floats for regression."""
    task, classes = TaskType(data.task), _classes(data)
    if task is TaskType.REGRESSION:
        return y.astype(np.float32)
    if y.dtype.kind not in "iub" and not (y.dtype.kind == "f" and np.all(y == np.round(y))):
        raise DataError(f"label {data.label!r} of {Path(path).name} must hold class ids "
                        f"0..{classes - 1} (integers) in a networked study", site=site)
    y = y.astype(np.int64)
    bad = (y < 0) | (y >= classes)
    if bad.any():
        raise DataError(f"{int(bad.sum())} rows of {Path(path).name} have a label outside "
                        f"0..{classes - 1}", site=site)
    return y


def _split_site(data: FederatedData, site: str, site_index: int, seed: int, x: np.ndarray,
                y: np.ndarray) -> SiteData:
    from fedcare.data.partition import split_train_test

    task = TaskType(data.task)
    classes = data.classes if task is TaskType.MULTICLASS else 2
    warning = few_rows_warning(site, len(y))
    if warning is not None:
        log.warning("%s", warning)
    tr, te = split_train_test(np.arange(len(y)), data.test_fraction,
                              site_round_seed(seed, 0, site_index))
    x_tr, x_te = x[tr], x[te]
    # No local scaling: when the study standardizes, every task carries the federation-wide
    # mean/std (computed from all sites' sums), so each site scales its rows identically.
    return SiteData(site, np.ascontiguousarray(x_tr, np.float32), y[tr],
                    np.ascontiguousarray(x_te, np.float32), y[te], tuple(data.features), task,
                    classes, test_split=f"random {data.test_fraction * 100:g} % split")


def clinical_site_data(data: FederatedData, site: str, site_index: int, seed: int,
                       built: ClinicalTable) -> SiteData:
    """The study's view of a clinical table; refused when the table fails the contract's
    minimum quality or is not the table the study was written for."""
    if built.violations:
        # The reasons are in the site's quality report (shared, small cells suppressed) and
        # its log; the refusal that travels to the hub names no count.
        raise DataError("refusing to train: the site's data fails the contract's minimum "
                        "quality rules (see `fedcare study data` and the site's quality "
                        "report)", site=site)
    if data.contract_hash is None:
        raise DataError("the study names no data contract (data.contract_hash): a site "
                        "trains a clinical dataset only for the contract it was built with",
                        site=site)
    if not contract_matches(data.contract_hash, built.contract_hash):
        raise DataError(f"the study names data contract {data.contract_hash[:12]}... but this "
                        f"site's dataset follows {built.contract_hash[:12]}...; the site must "
                        "check its data against the study's contract", site=site)
    if list(data.features) != built.features or data.label != built.table.label:
        raise DataError(f"study features/label {list(data.features)}/{data.label!r} are not "
                        f"the contract's {built.features}/{built.table.label!r}", site=site)
    x, y = built.arrays()
    return _split_site(data, site, site_index, seed, x, y)
