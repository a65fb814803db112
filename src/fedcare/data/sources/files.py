"""``source = "files"``: one CSV/Parquet table per site, optionally with a fixed test file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

from pydantic import Field

from fedcare.core.settings import Section
from fedcare.data.sources.base import MAX_SITES, DataCapabilities, DataOptions
from fedcare.data.sources.registry import register_source

if TYPE_CHECKING:
    from fedcare.core.dataset import SiteData

#: Key prefix of a site's test-file labels in the shared label vocabulary.
_TEST = "\0test:"


class SiteFile(Section):
    name: str = Field(min_length=1, max_length=100, description="Site name.")
    path: Path = Field(description="CSV (.csv, .csv.gz) or Parquet file, relative to the config.")
    test_path: Path | None = Field(None, description=(
        "Optional fixed test file (same columns), for temporal or external validation: the "
        "site is tested on it and trains on all of path (data.test_fraction is ignored for "
        "this site)."))


@register_source
class FilesData(DataOptions):
    source: Literal["files"] = Field(description="One CSV/Parquet file per site.")
    label: str = Field(min_length=1, description="Label column (present at every site).")
    features: list[str] | None = Field(
        None, description="Feature columns; default: every column except the label.")
    site: list[SiteFile] = Field(min_length=1, max_length=MAX_SITES, description=(
        "Sites: [[data.site]] name, path, and optionally test_path (a fixed test file: the "
        "site trains on all of path and is tested on it; test_fraction is ignored there)."))

    capabilities: ClassVar[DataCapabilities] = DataCapabilities(raw_columns=True)

    def problems(self) -> list[str]:
        unknown = [c for c in self.categorical
                   if self.features is not None and c not in self.features]
        return [f"'data.categorical': {unknown} are not in data.features"] if unknown else []

    def resolved(self, base: Path) -> Self:
        sites = [s.model_copy(update={"path": base / s.path, "test_path": (
            base / s.test_path if s.test_path is not None else None)}) for s in self.site]
        return self.model_copy(update={"site": sites})

    def declared_sites(self) -> int:
        return len(self.site)

    def hashed(self, doc: dict[str, Any]) -> dict[str, Any]:
        for site in doc["site"]:  # no test file: hash as before test_path existed
            if site.get("test_path") is None:
                site.pop("test_path", None)
        return doc

    def build(self, seed: int) -> list[SiteData]:
        """One table per site; a site with ``test_path`` is tested on that file (temporal or
        external validation) instead of a random ``test_fraction`` of its rows."""
        from dataclasses import replace

        import numpy as np

        from fedcare.core.errors import DataError
        from fedcare.data.prepare import Columns, SiteColumns, load_raw_table, with_columns
        from fedcare.data.sources.split import finish, split_rows, task_of, unique_site_names
        from fedcare.data.table import Table
        from fedcare.data.tabular import check_same_features, encode_labels, load_table

        unique_site_names([s.name for s in self.site])
        columns: dict[str, SiteColumns] = {}
        if Columns.of(self, self.features or ()).active:
            if any(s.test_path is not None for s in self.site):
                raise DataError("a fixed test file (data.site.test_path) cannot be combined "
                                "with data.impute or data.categorical yet: give the test rows "
                                "a random split (data.test_fraction) or prepare the files "
                                "without gaps")
            tables = {}
            for s in self.site:
                loaded = load_raw_table(s.path, label=self.label, features=self.features,
                                        site=s.name, data=self)
                tables[s.name] = Table(loaded.x, loaded.y, loaded.feature_names)
                columns[s.name] = loaded.site
        else:
            tables = {s.name: load_table(s.path, label=self.label, features=self.features,
                                         site=s.name) for s in self.site}
        tests = {s.name: load_table(s.test_path, label=self.label, features=self.features,
                                    site=s.name) for s in self.site if s.test_path is not None}
        check_same_features({**tables, **{f"{n} (test file)": t for n, t in tests.items()}})
        raw = {**tables, **{_TEST + n: t for n, t in tests.items()}}  # one label vocabulary
        y_all = np.concatenate([t.y for t in raw.values()])
        regression = y_all.dtype.kind == "f" and len(np.unique(y_all)) > 20
        vocab: tuple[object, ...] = ()
        if regression:
            labels = {n: t.y.astype(np.float32) for n, t in raw.items()}
        else:
            labels, vocab = encode_labels({n: t.y for n, t in raw.items()})
        task, n_classes = task_of(np.concatenate(list(labels.values())))
        arrays, splits = [], {}
        for i, (name, t) in enumerate(tables.items()):
            y = labels[name]
            if name in tests:
                arrays.append((name, t.x, y, tests[name].x, labels[_TEST + name]))
                test_path = next(s.test_path for s in self.site if s.name == name)
                splits[name] = f"fixed file {Path(str(test_path)).name}"
                continue
            tr, te = split_rows(np.arange(len(t.y)), self.test_fraction, seed, i)
            arrays.append((name, t.x[tr], y[tr], t.x[te], y[te]))
            splits[name] = self.test_split()
        first = next(iter(tables.values()))
        # Raw rows (missing values, level codes) are scaled after encoding, by the executors.
        sites = finish(arrays, first.feature_names, task, n_classes,
                       self.standardize and not columns)
        sites = [replace(s, label_values=vocab, test_split=splits[s.name]) for s in sites]
        return [with_columns(s, columns[s.name]) if columns else s for s in sites]
