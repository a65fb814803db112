"""Missing values and categorical columns, with statistics a federation computes without
pooling rows.

A site reads its table *raw*: numeric features as float64 with NaN where a value is missing,
each categorical feature as the index of its value among the site's own sorted levels (NaN
when missing). Nothing is filled or encoded at load time, because the fill values and the
level list are the federation's, agreed in the round-0 statistics exchange that also yields
the standardization (:meth:`fedcare.engine.round_engine.RoundEngine.feature_statistics`):

- **Imputation** (``data.impute = "mean"``): each site adds, per numeric feature, its count of
  observed values to the sums it already sends for standardizing; the fill value is the
  federation's mean of the observed values. The mean, not the median, because it falls out
  of the very sums standardization sends - the same secure sum, the same DP clipping and
  noise (one more bounded count per feature, see
  :func:`fedcare.data.standardize.bounded_sensitivity`) - while a federated median needs a
  noised histogram per feature over declared ranges, a second, larger release.
- **Categories** (``data.categorical``): each site reports, per categorical column, the levels
  it holds in at least :data:`MIN_LEVEL_ROWS` training rows (rarer ones are suppressed, as in
  the quality reports); the federation's list is their sorted union, sent back with the
  normalizer, and every site one-hot encodes against it. A missing value, or a level not on
  the list, encodes as all zeros (an "unknown" level needs no statistic, where a most-frequent
  fill would need per-level counts). Each column has ``data.max_levels`` one-hot columns
  whatever the list holds (unused ones stay zero), so the model's shape is fixed by the
  study alone, before any site answers.

Rows without a label cannot be trained or evaluated on: with ``data.impute`` they are dropped
and counted by reason (:attr:`SiteColumns.dropped`), never silently.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedcare.core.dataset import SiteData
from fedcare.core.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

#: A site reports a category level only when at least this many of its training rows hold it
#: (the small-cell rule of the feature statistics and the quality reports).
MIN_LEVEL_ROWS = 10
#: The reason recorded for rows dropped because their label is missing.
MISSING_LABEL = "missing label"


@dataclass(frozen=True)
class Columns:
    """The study's view of a table's features: which are categorical, how each is encoded."""

    features: tuple[str, ...]
    categorical: tuple[str, ...] = ()
    max_levels: int = 20
    impute: str = "none"
    standardize: bool = True

    @classmethod
    def of(cls, data: object, features: Sequence[str]) -> Columns:
        """From a study's ``[data]`` section and the table's feature names."""
        return cls(tuple(features), tuple(getattr(data, "categorical", ()) or ()),
                   int(getattr(data, "max_levels", 20)), str(getattr(data, "impute", "none")),
                   bool(getattr(data, "standardize", True)))

    @property
    def active(self) -> bool:
        """Whether the study imputes or encodes (else tables load exactly as they always did)."""
        return self.impute != "none" or bool(self.categorical)

    @property
    def numeric(self) -> np.ndarray:
        """Positions of the numeric features in the raw table."""
        cat = set(self.categorical)
        return np.array([i for i, f in enumerate(self.features) if f not in cat], dtype=np.intp)

    @property
    def width(self) -> int:
        """Columns of the encoded table (the model's input width)."""
        cat = set(self.categorical)
        return sum(self.max_levels if f in cat else 1 for f in self.features)

    def encoded_names(self, levels: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
        cat = set(self.categorical)
        out: list[str] = []
        for f in self.features:
            if f not in cat:
                out.append(f)
                continue
            lv = list(levels.get(f, ()))
            out += [f"{f}={v}" for v in lv] + [f"{f}=(unused {i})"
                                               for i in range(self.max_levels - len(lv))]
        return tuple(out)


@dataclass(frozen=True)
class SiteColumns:
    """One site's raw-table facts: its own levels of each categorical column (code ``i`` of
    column ``c`` is ``local_levels[c][i]``) and the rows it dropped, by reason."""

    columns: Columns
    local_levels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    dropped: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TabularSiteData(SiteData):
    """A site's *raw* rows (NaN for missing values, local level codes for categories) with what
    encoding them needs; the executor encodes them once the federation's statistics arrive."""

    columns: SiteColumns | None = None


def with_columns(data: SiteData, columns: SiteColumns) -> TabularSiteData:
    """``data`` (raw rows) with the facts encoding them needs."""
    import dataclasses

    return TabularSiteData(**{f.name: getattr(data, f.name) for f in dataclasses.fields(
        SiteData)}, columns=columns)


# -- reading a site's table -------------------------------------------------------------------
@dataclass(frozen=True)
class RawTable:
    x: np.ndarray  # float64 (n, features): NaN = missing; categorical columns hold level codes
    y: np.ndarray
    feature_names: tuple[str, ...]
    site: SiteColumns


def load_raw_table(path: str | Path, *, label: str, features: Sequence[str] | None,
                   site: str, data: object) -> RawTable:
    """Read a site's table for a study that imputes or encodes categories (see the module
    docstring); every problem is a :class:`DataError` naming the column, never a value."""
    import pandas as pd

    from fedcare.data.tabular import _label_vector, _read_frame, _select_features

    p = Path(path)
    frame = _read_frame(p, site)
    frame.columns = pd.Index([str(c) for c in frame.columns])
    columns_all = list(frame.columns)
    if label not in columns_all:
        raise DataError(f"label column {label!r} is not in {p}; fix data.label or the file's "
                        "header.", site=site)
    names = _select_features(columns_all, label, features, p, site)
    cols = Columns.of(data, names)
    unknown = [c for c in cols.categorical if c not in names]
    if unknown:
        raise DataError(f"data.categorical names {unknown}, which are not feature columns of "
                        f"{p}", site=site)
    dropped: dict[str, int] = {}
    if cols.impute != "none":
        keep = frame[label].notna().to_numpy()
        if not keep.all():
            dropped[MISSING_LABEL] = int((~keep).sum())
            frame = frame.loc[keep].reset_index(drop=True)
    if len(frame) == 0:
        raise DataError(f"{p} has no rows with a label; export the site's data again.",
                        site=site)
    cat = set(cols.categorical)
    x = np.empty((len(frame), len(names)), dtype=np.float64)
    local: dict[str, tuple[str, ...]] = {}
    for j, name in enumerate(names):
        if name in cat:
            x[:, j], local[name] = _level_codes(frame[name], name, cols.max_levels, p, site)
        else:
            x[:, j] = _numeric(frame[name], name, cols.impute, p, site)
    y = _label_vector(frame[label], label, p, site)
    return RawTable(x, y, tuple(names), SiteColumns(cols, local, dropped))


def _numeric(col: pd.Series, name: str, impute: str, p: Path, site: str) -> np.ndarray:
    import pandas as pd
    if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_complex_dtype(col):
        raise DataError(f"feature column {name!r} in {p} is not numeric; list it in "
                        "data.categorical (one-hot encoded) or drop it from data.features.",
                        site=site)
    v = col.to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isinf(v).any() or (np.abs(v[np.isfinite(v)]) > np.finfo(np.float32).max).any():
        raise DataError(f"column {name!r} of {p} holds infinite values (or values too large "
                        "for float32); fix the export.", site=site)
    missing = int(np.isnan(v).sum())
    if missing and impute == "none":
        raise DataError(f"column {name!r} of {p} is missing in {missing} row(s); set "
                        "data.impute = \"mean\" or drop those rows before training.", site=site)
    return v


def _level_codes(col: pd.Series, name: str, max_levels: int, p: Path, site: str
                 ) -> tuple[np.ndarray, tuple[str, ...]]:
    present = col.notna().to_numpy()
    text = col[present].astype(str).str.strip()
    levels = tuple(sorted(set(text)))
    if len(levels) > max_levels:
        raise DataError(f"categorical column {name!r} of {p} has {len(levels)} distinct values "
                        f"at this site, more than data.max_levels = {max_levels}: a column with "
                        "that many levels is an identifier or free text, not a category; drop "
                        "it, group its values, or raise data.max_levels.", site=site)
    codes = np.full(len(col), np.nan)
    codes[present] = np.searchsorted(np.array(levels, dtype=object), text.to_numpy())
    return codes, levels


# -- the statistics a site sends --------------------------------------------------------------
def reported_levels(x: np.ndarray, site: SiteColumns) -> dict[str, list[str]]:
    """Per categorical column, the levels held by at least :data:`MIN_LEVEL_ROWS` of the rows
    ``x`` (the site's training rows); rarer levels are suppressed."""
    cols = site.columns
    out: dict[str, list[str]] = {}
    for j, name in enumerate(cols.features):
        if name not in cols.categorical:
            continue
        codes = x[:, j]
        codes = codes[~np.isnan(codes)].astype(np.int64)
        counts = np.bincount(codes, minlength=len(site.local_levels[name]))
        out[name] = [lv for lv, n in zip(site.local_levels[name], counts, strict=True)
                     if n >= MIN_LEVEL_ROWS]
    return out


def text_array(doc: object) -> np.ndarray:
    """JSON as a float64 array of UTF-8 bytes (the wire carries float arrays only)."""
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return np.frombuffer(raw, dtype=np.uint8).astype(np.float64)


def array_text(arr: np.ndarray) -> object:
    a = np.asarray(arr)
    if a.ndim != 1 or not np.all((a >= 0) & (a <= 255) & (a == np.round(a))):
        raise DataError("a level list must be bytes")
    try:
        return json.loads(a.astype(np.uint8).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError("a level list is not valid JSON") from exc


def federation_levels(reports: Sequence[Mapping[str, Sequence[str]]], cols: Columns
                      ) -> dict[str, list[str]]:
    """The sorted union of the sites' reported levels, per categorical column; a column whose
    union exceeds ``max_levels`` (sites with different spellings, or too fine a coding) stops
    the study."""
    out: dict[str, list[str]] = {}
    for name in cols.categorical:
        union: set[str] = set()
        for r in reports:
            got = r.get(name)
            if not isinstance(got, list) or not all(isinstance(v, str) for v in got):
                raise DataError(f"a site's level report for column {name!r} is malformed")
            union.update(got)
        if len(union) > cols.max_levels:
            raise DataError(f"categorical column {name!r} has {len(union)} levels across the "
                            f"sites, more than data.max_levels = {cols.max_levels}; the sites "
                            "may spell the same category differently - harmonize the coding, "
                            "or raise data.max_levels")
        out[name] = sorted(union)
    return out


# -- applying the federation's statistics -----------------------------------------------------
def encode(x: np.ndarray, site: SiteColumns, fill: np.ndarray | None,
           levels: Mapping[str, Sequence[str]]) -> np.ndarray:
    """The site's raw rows as the model sees them (before scaling): numeric features with
    missing values filled by ``fill`` (one value per numeric feature), each categorical
    feature one-hot over the federation's ``levels`` in ``max_levels`` columns."""
    cols = site.columns
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros((len(x), cols.width), dtype=np.float64)
    k = 0  # the position among numeric features
    c = 0  # the output column
    for j, name in enumerate(cols.features):
        if name not in cols.categorical:
            v = x[:, j]
            if np.isnan(v).any():
                if fill is None:
                    raise DataError(f"column {name!r} has missing values and the study does "
                                    "not impute", site=None)
                v = np.where(np.isnan(v), fill[k], v)
            out[:, c] = v
            k += 1
            c += 1
            continue
        lv = list(levels.get(name, ()))
        slot = {v: i for i, v in enumerate(lv)}
        local = site.local_levels[name]
        # The site's level code -> its slot in the federation's list (-1: not listed).
        to_slot = np.array([slot.get(v, -1) for v in local] + [-1], dtype=np.int64)
        codes = x[:, j]
        idx = np.where(np.isnan(codes), len(local), codes).astype(np.int64)
        s = to_slot[idx]
        rows = np.nonzero(s >= 0)[0]
        out[rows, c + s[rows]] = 1.0
        c += cols.max_levels
    return out


def prepared(x: np.ndarray, site: SiteColumns, norm: Mapping[str, np.ndarray]) -> np.ndarray:
    """Encoded and scaled float32 rows from a site's raw rows and the federation's
    normalizer (``mean``, ``std`` over the encoded columns; ``fill``; ``levels``)."""
    levels = array_text(norm["levels"]) if "levels" in norm else {}
    if not isinstance(levels, dict):
        raise DataError("the normalizer's level list is malformed")
    fill = np.asarray(norm["fill"], dtype=np.float64) if "fill" in norm else None
    enc = encode(x, site, fill, levels)
    mean = np.asarray(norm["mean"], dtype=np.float64)
    std = np.asarray(norm["std"], dtype=np.float64)
    if mean.shape != (enc.shape[1],) or std.shape != (enc.shape[1],):
        raise DataError(f"the normalizer has {mean.size} columns, the encoded table "
                        f"{enc.shape[1]}")
    return ((enc - mean) / std).astype(np.float32)
