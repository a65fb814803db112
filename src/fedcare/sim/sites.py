"""Turn the ``[data]`` section of a study into one :class:`SiteData` per site.

All validation happens here, before any output is written: a missing file, an absent label,
a site with zero rows or features that differ between sites stop the run with a message that
names the site.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedcare.config import (
    BuiltinData,
    ClinicalData,
    DataSection,
    FilesData,
    ImageData,
    ImageFolderData,
    PooledFileData,
    SyntheticData,
)
from fedcare.core.dataset import SiteData, TaskType
from fedcare.core.errors import DataError
from fedcare.core.seeds import site_round_seed
from fedcare.data.prepare import Columns, SiteColumns, load_raw_table, with_columns
from fedcare.data.table import Table

if TYPE_CHECKING:
    from fedcare.data.clinical import ClinicalTable


def build_sites(data: DataSection, seed: int) -> list[SiteData]:
    if isinstance(data, BuiltinData):
        from fedcare.data.builtin import load_breast_cancer

        table = load_breast_cancer()
        return _split_table(table, data.sites, data.partition, data.alpha, None,
                            data.test_fraction, data.standardize, seed)
    if isinstance(data, SyntheticData):
        from fedcare.data.builtin import make_synthetic

        table = make_synthetic(data.rows_per_site * data.sites, data.n_features,
                               n_classes=data.classes, seed=seed)
        return _split_table(table, data.sites, data.partition, data.alpha, None,
                            data.test_fraction, data.standardize, seed)
    if isinstance(data, FilesData):
        return _files(data, seed)
    if isinstance(data, PooledFileData):
        return _pooled_file(data, seed)
    if isinstance(data, ImageData):
        return _images(data, seed)
    if isinstance(data, ImageFolderData):
        return _image_folders(data, seed)
    if isinstance(data, ClinicalData):
        return _clinical(data, seed)
    raise DataError(f"unsupported data source {type(data).__name__}")  # pragma: no cover


def input_standardization(data: DataSection, seed: int) -> dict[str, np.ndarray] | None:
    """The ``mean``/``std`` :func:`build_sites` scaled every site's features by (None: the
    study does not standardize), for the saved model bundle: the sites are built again
    unscaled and pooled by the same rule. (Building twice keeps the loaders' return values
    unchanged; it costs one more read of the files, once per run.)"""
    if not data.standardize:
        return None
    from fedcare.data.standardize import federated_standardizer

    raw = build_sites(data.model_copy(update={"standardize": False}), seed)
    mean, std = federated_standardizer([s.x_train for s in raw])
    return {"mean": mean, "std": std}


def _pooled_file(data: PooledFileData, seed: int) -> list[SiteData]:
    """One table split into sites; ``attribute`` names a column holding each row's site."""
    import pandas as pd

    from fedcare.data.tabular import encode_labels, load_table

    feats = data.features
    attr = None
    if data.partition == "attribute":
        if not data.attribute:
            raise DataError("data.partition = 'attribute' needs data.attribute (a column name)")
        path = str(data.path)
        reader = pd.read_parquet if path.endswith((".parquet", ".pq")) else pd.read_csv
        try:
            frame = reader(path)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {path}: {exc}") from exc
        if data.attribute not in frame.columns:
            raise DataError(f"attribute column {data.attribute!r} is not in {path}; it has "
                            f"{list(frame.columns)}")
        attr = frame[data.attribute].astype(str).to_numpy()
        feats = feats or [c for c in frame.columns if c not in (data.label, data.attribute)]
        feats = [f for f in feats if f != data.attribute]
    columns = None
    if Columns.of(data, feats or ()).active:
        raw = load_raw_table(data.path, label=data.label, features=feats, site="(all)",
                             data=data)
        table = Table(raw.x, raw.y, raw.feature_names)
        # Rows are dropped before the table is split: each site shows the table's count.
        columns = SiteColumns(raw.site.columns, raw.site.local_levels,
                              {f"{k} (whole table)": v for k, v in raw.site.dropped.items()})
        if attr is not None and raw.site.dropped:
            raise DataError("data.partition = 'attribute' with rows dropped for a missing "
                            "label: drop those rows from the table first")
    else:
        table = load_table(data.path, label=data.label, features=feats, site="(all)")
    labels, vocab = encode_labels({"all": table.y})
    table = Table(table.x, labels["all"], table.feature_names)
    sites = _split_table(table, data.sites, data.partition, data.alpha, attr,
                         data.test_fraction, data.standardize and columns is None, seed)
    sites = [replace(s, label_values=vocab) for s in sites]
    return sites if columns is None else [with_columns(s, columns) for s in sites]


def _task_of(y: np.ndarray) -> tuple[TaskType, int]:
    from fedcare.data.tabular import infer_task

    return infer_task(y)


def _split_table(table: Table, n_sites: int, partition: str, alpha: float,
                 attribute: np.ndarray | None, test_fraction: float, standardize: bool,
                 seed: int) -> list[SiteData]:
    from fedcare.data.partition import (
        partition_by_attribute,
        partition_dirichlet,
        partition_iid,
    )

    if partition == "attribute":
        assert attribute is not None
        shards = dict(sorted(partition_by_attribute(attribute).items()))
    elif partition == "dirichlet":
        parts = partition_dirichlet(table.y, n_sites, alpha, seed)
        shards = {f"site-{i + 1}": p for i, p in enumerate(parts)}
    else:
        parts = partition_iid(len(table.y), n_sites, seed)
        shards = {f"site-{i + 1}": p for i, p in enumerate(parts)}
    task, n_classes = _task_of(table.y)
    arrays = []
    for i, (name, idx) in enumerate(shards.items()):
        if len(idx) == 0:
            raise DataError("has zero rows after partitioning; use fewer sites", site=name)
        tr, te = _split(idx, test_fraction, seed, i)
        arrays.append((name, table.x[tr], table.y[tr], table.x[te], table.y[te]))
    return _finish(arrays, table.feature_names, task, n_classes, standardize)


def _split(idx: np.ndarray, test_fraction: float, seed: int,
           site_index: int) -> tuple[np.ndarray, np.ndarray]:
    from fedcare.data.partition import split_train_test

    return split_train_test(idx, test_fraction, site_round_seed(seed, 0, site_index))


def _finish(arrays: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
            feature_names: Sequence[str], task: TaskType, n_classes: int,
            standardize: bool) -> list[SiteData]:
    if standardize:
        from fedcare.data.standardize import apply_standardizer, federated_standardizer

        mean, std = federated_standardizer([a[1] for a in arrays])
        arrays = [(n, apply_standardizer(xtr, mean, std), ytr, apply_standardizer(xte, mean, std),
                   yte) for n, xtr, ytr, xte, yte in arrays]
    out = []
    for name, xtr, ytr, xte, yte in arrays:
        if len(ytr) == 0:
            raise DataError("has zero training rows; lower data.test_fraction or add data",
                            site=name)
        out.append(SiteData(name=name, x_train=np.ascontiguousarray(xtr, dtype=np.float32),
                            y_train=_labels(ytr, task), x_test=np.ascontiguousarray(
                                xte, dtype=np.float32), y_test=_labels(yte, task),
                            feature_names=tuple(feature_names), task=task,
                            num_classes=n_classes))
    return out


def _labels(y: np.ndarray, task: TaskType) -> np.ndarray:
    return np.ascontiguousarray(y, dtype=np.float32 if task is TaskType.REGRESSION else np.int64)


def _files(data: FilesData, seed: int) -> list[SiteData]:
    """One table per site; a site with ``test_path`` is tested on that file (temporal or
    external validation) instead of a random ``test_fraction`` of its rows."""
    from fedcare.data.tabular import check_same_features, encode_labels, load_table

    names = [s.name for s in data.site]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"site names must be unique; repeated: {dupes}")
    columns: dict[str, SiteColumns] = {}
    if Columns.of(data, data.features or ()).active:
        if any(s.test_path is not None for s in data.site):
            raise DataError("a fixed test file (data.site.test_path) cannot be combined with "
                            "data.impute or data.categorical yet: give the test rows a random "
                            "split (data.test_fraction) or prepare the files without gaps")
        tables = {}
        for s in data.site:
            loaded = load_raw_table(s.path, label=data.label, features=data.features,
                                    site=s.name, data=data)
            tables[s.name] = Table(loaded.x, loaded.y, loaded.feature_names)
            columns[s.name] = loaded.site
    else:
        tables = {s.name: load_table(s.path, label=data.label, features=data.features,
                                     site=s.name) for s in data.site}
    tests = {s.name: load_table(s.test_path, label=data.label, features=data.features,
                                site=s.name) for s in data.site if s.test_path is not None}
    check_same_features({**tables, **{f"{n} (test file)": t for n, t in tests.items()}})
    raw = {**tables, **{_TEST + n: t for n, t in tests.items()}}  # one label vocabulary
    y_all = np.concatenate([t.y for t in raw.values()])
    regression = y_all.dtype.kind == "f" and len(np.unique(y_all)) > 20
    vocab: tuple[object, ...] = ()
    if regression:
        labels = {n: t.y.astype(np.float32) for n, t in raw.items()}
    else:
        labels, vocab = encode_labels({n: t.y for n, t in raw.items()})
    task, n_classes = _task_of(np.concatenate(list(labels.values())))
    arrays, splits = [], {}
    for i, (name, t) in enumerate(tables.items()):
        y = labels[name]
        if name in tests:
            arrays.append((name, t.x, y, tests[name].x, labels[_TEST + name]))
            test_path = next(s.test_path for s in data.site if s.name == name)
            splits[name] = f"fixed file {Path(str(test_path)).name}"
            continue
        tr, te = _split(np.arange(len(t.y)), data.test_fraction, seed, i)
        arrays.append((name, t.x[tr], y[tr], t.x[te], y[te]))
        splits[name] = f"random {data.test_fraction * 100:g} % split"
    first = next(iter(tables.values()))
    # Raw rows (missing values, level codes) are scaled after encoding, by the executors.
    sites = _finish(arrays, first.feature_names, task, n_classes,
                    data.standardize and not columns)
    sites = [replace(s, label_values=vocab, test_split=splits[s.name]) for s in sites]
    return [with_columns(s, columns[s.name]) if columns else s for s in sites]


#: Key prefix of a site's test-file labels in the shared label vocabulary.
_TEST = "\0test:"


def _images(data: ImageData, seed: int) -> list[SiteData]:
    from fedcare.data.images import load_npz_images
    from fedcare.data.partition import partition_dirichlet, partition_iid

    splits = load_npz_images(data.path, site="(all)")
    x_tr, y_tr = splits["train"]
    x_te, y_te = splits.get("test", (x_tr[:0], y_tr[:0]))
    task, n_classes = _task_of(np.concatenate([y_tr, y_te]))
    if data.partition == "dirichlet":
        train_parts = partition_dirichlet(y_tr, data.sites, data.alpha, seed)
    else:
        train_parts = partition_iid(len(y_tr), data.sites, seed)
    test_parts = (partition_iid(len(y_te), data.sites, seed + 1) if len(y_te) >= data.sites
                  else [np.arange(0)] * data.sites)
    arrays = [(f"site-{i + 1}", x_tr[tp], y_tr[tp], x_te[sp], y_te[sp])
              for i, (tp, sp) in enumerate(zip(train_parts, test_parts, strict=True))]
    return _finish(arrays, (), task, n_classes, data.standardize)


def _image_folders(data: ImageFolderData, seed: int) -> list[SiteData]:
    """Each site's DICOM/NIfTI folder with its label file (see :mod:`fedcare.data.imaging`);
    the class count is agreed across sites (a site may lack a class)."""
    from fedcare.data.imaging import image_site_data

    window = (data.window[0], data.window[1]) if data.window else None
    classes = data.classes or max(2, 1 + max(_max_label(s.labels, s.name) for s in data.site))
    return [image_site_data(s.folder, s.labels, site=s.name, size=data.size, window=window,
                            test_fraction=data.test_fraction, seed=seed, site_index=i,
                            num_classes=classes)[0] for i, s in enumerate(data.site)]


def clinical_tables(data: ClinicalData) -> dict[str, ClinicalTable]:
    """Each site's table, built from its source file exactly as its node (and ``fedcare data
    build``) builds it; a site whose table fails the contract's quality rules stops the run,
    as its node would refuse to train."""
    from fedcare.data.clinical import build_clinical_table

    names = [s.name for s in data.site]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"site names must be unique; repeated: {dupes}")
    tables = {s.name: build_clinical_table(s.source, data.contract, s.name) for s in data.site}
    for name, built in tables.items():
        if built.violations:
            raise DataError("its data fails the contract's minimum quality rules (a node would "
                            "refuse to train): " + "; ".join(built.violations), site=name)
    return tables


def _clinical(data: ClinicalData, seed: int) -> list[SiteData]:
    """The node's split (:func:`fedcare.node.site_data.clinical_site_data`): the same rows go
    to training and testing in simulation and deployment."""
    tables = clinical_tables(data)
    arrays = []
    for i, (name, built) in enumerate(tables.items()):
        x, y = built.arrays()
        tr, te = _split(np.arange(len(y)), data.test_fraction, seed, i)
        arrays.append((name, x[tr], y[tr], x[te], y[te]))
    features = next(iter(tables.values())).features
    return _finish(arrays, features, TaskType.BINARY, 2, data.standardize)


def _max_label(path: Path, site: str) -> int:
    import pandas as pd

    try:
        return int(pd.read_csv(path)["label"].max())
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"cannot read labels from {path}: {exc}", site=site) from exc


def pooled(sites: Sequence[SiteData]) -> SiteData:
    """All sites' rows together: the centralized baseline (only possible in simulation)."""
    s0 = sites[0]
    return SiteData(name="pooled", x_train=np.concatenate([s.x_train for s in sites]),
                    y_train=np.concatenate([s.y_train for s in sites]),
                    x_test=np.concatenate([s.x_test for s in sites]),
                    y_test=np.concatenate([s.y_test for s in sites]),
                    feature_names=s0.feature_names, task=s0.task, num_classes=s0.num_classes)
