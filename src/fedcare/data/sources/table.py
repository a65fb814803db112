"""``source = "table"``: one table split into simulated sites by a partitioner."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, Self

from pydantic import Field

from fedcare.data.sources.base import MAX_ALPHA, MAX_SITES, DataCapabilities, DataOptions
from fedcare.data.sources.registry import register_source

if TYPE_CHECKING:
    from fedcare.core.dataset import SiteData


@register_source
class PooledFileData(DataOptions):
    source: Literal["table"] = Field(description="One table split into sites by a partitioner.")
    path: Path = Field(description="CSV or Parquet file, relative to the config.")
    label: str = Field(min_length=1, description="Label column.")
    features: list[str] | None = Field(None, description="Feature columns (default: all).")
    sites: int = Field(4, ge=1, le=MAX_SITES, description="Number of sites (iid/dirichlet).")
    partition: Literal["iid", "dirichlet", "attribute"] = Field(
        "iid", description="iid, dirichlet, or attribute (one site per value of a column).")
    alpha: float = Field(0.5, gt=0, le=MAX_ALPHA, allow_inf_nan=False,
                         description="Dirichlet concentration.")
    attribute: str | None = Field(None, description="Column naming each row's site.")

    capabilities: ClassVar[DataCapabilities] = DataCapabilities(raw_columns=True)

    def problems(self) -> list[str]:
        unknown = [c for c in self.categorical
                   if self.features is not None and c not in self.features]
        return [f"'data.categorical': {unknown} are not in data.features"] if unknown else []

    def resolved(self, base: Path) -> Self:
        return self.model_copy(update={"path": base / self.path})

    def declared_sites(self) -> int | None:
        return None if self.partition == "attribute" else self.sites

    def build(self, seed: int) -> list[SiteData]:
        """One table split into sites; ``attribute`` names a column holding each row's site."""
        from dataclasses import replace

        import pandas as pd

        from fedcare.core.errors import DataError
        from fedcare.data.prepare import Columns, SiteColumns, load_raw_table, with_columns
        from fedcare.data.sources.split import split_table
        from fedcare.data.table import Table
        from fedcare.data.tabular import encode_labels, load_table

        feats = self.features
        attr = None
        if self.partition == "attribute":
            if not self.attribute:
                raise DataError("data.partition = 'attribute' needs data.attribute (a column "
                                "name)")
            path = str(self.path)
            reader = pd.read_parquet if path.endswith((".parquet", ".pq")) else pd.read_csv
            try:
                frame = reader(path)
            except (OSError, ValueError) as exc:
                raise DataError(f"cannot read {path}: {exc}") from exc
            if self.attribute not in frame.columns:
                raise DataError(f"attribute column {self.attribute!r} is not in {path}; it has "
                                f"{list(frame.columns)}")
            attr = frame[self.attribute].astype(str).to_numpy()
            feats = feats or [c for c in frame.columns if c not in (self.label, self.attribute)]
            feats = [f for f in feats if f != self.attribute]
        columns = None
        if Columns.of(self, feats or ()).active:
            raw = load_raw_table(self.path, label=self.label, features=feats, site="(all)",
                                 data=self)
            table = Table(raw.x, raw.y, raw.feature_names)
            # Rows are dropped before the table is split: each site shows the table's count.
            columns = SiteColumns(raw.site.columns, raw.site.local_levels,
                                  {f"{k} (whole table)": v for k, v in raw.site.dropped.items()})
            if attr is not None and raw.site.dropped:
                raise DataError("data.partition = 'attribute' with rows dropped for a missing "
                                "label: drop those rows from the table first")
        else:
            table = load_table(self.path, label=self.label, features=feats, site="(all)")
        labels, vocab = encode_labels({"all": table.y})
        table = Table(table.x, labels["all"], table.feature_names)
        sites = split_table(table, self.sites, self.partition, self.alpha, attr,
                            self.test_fraction, self.standardize and columns is None, seed)
        sites = [replace(s, label_values=vocab) for s in sites]
        return sites if columns is None else [with_columns(s, columns) for s in sites]
