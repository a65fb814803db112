"""``source = "synthetic"``: generated classification data, split over simulated sites."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fedcare.data.sources.base import (
    MAX_ALPHA,
    MAX_CLASSES,
    MAX_FEATURES,
    MAX_ROWS_PER_SITE,
    MAX_SITES,
    DataOptions,
)
from fedcare.data.sources.registry import register_source

if TYPE_CHECKING:
    from fedcare.core.dataset import SiteData


@register_source
class SyntheticData(DataOptions):
    source: Literal["synthetic"] = Field(description="Generated classification data.")
    sites: int = Field(4, ge=1, le=MAX_SITES, description="Number of simulated sites.")
    rows_per_site: int = Field(1000, ge=2, le=MAX_ROWS_PER_SITE,
                               description="Rows generated per site.")
    n_features: int = Field(20, ge=1, le=MAX_FEATURES, description="Number of features.")
    classes: int = Field(2, ge=2, le=MAX_CLASSES, description="Number of classes.")
    partition: Literal["iid", "dirichlet"] = Field("iid", description="iid or dirichlet.")
    alpha: float = Field(0.5, gt=0, le=MAX_ALPHA, allow_inf_nan=False,
                         description="Dirichlet concentration.")

    def build(self, seed: int) -> list[SiteData]:
        from fedcare.data.builtin import make_synthetic
        from fedcare.data.sources.split import split_table

        table = make_synthetic(self.rows_per_site * self.sites, self.n_features,
                               n_classes=self.classes, seed=seed)
        return split_table(table, self.sites, self.partition, self.alpha, None,
                           self.test_fraction, self.standardize, seed)

    def declared_sites(self) -> int:
        return self.sites

    def declared_task(self) -> str:
        return "binary" if self.classes == 2 else "multiclass"
