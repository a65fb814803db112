"""``source = "builtin"``: a dataset shipped with a dependency, split over simulated sites."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fedcare.data.sources.base import MAX_ALPHA, MAX_SITES, DataOptions
from fedcare.data.sources.registry import register_source

if TYPE_CHECKING:
    from fedcare.core.dataset import SiteData


@register_source
class BuiltinData(DataOptions):
    source: Literal["builtin"] = Field(description="Data shipped with a dependency.")
    dataset: Literal["breast_cancer"] = Field(
        "breast_cancer", description="Built-in dataset: breast_cancer (scikit-learn, 569 rows).")
    sites: int = Field(4, ge=1, le=MAX_SITES, description="Number of simulated sites.")
    partition: Literal["iid", "dirichlet"] = Field(
        "dirichlet", description="How rows are split: iid or dirichlet (label skew).")
    alpha: float = Field(0.5, gt=0, le=MAX_ALPHA, allow_inf_nan=False,
                         description="Dirichlet concentration (smaller = more skew).")

    def build(self, seed: int) -> list[SiteData]:
        from fedcare.data.builtin import load_breast_cancer
        from fedcare.data.sources.split import split_table

        return split_table(load_breast_cancer(), self.sites, self.partition, self.alpha, None,
                           self.test_fraction, self.standardize, seed)

    def declared_sites(self) -> int:
        return self.sites

    def declared_task(self) -> str:
        return "binary"
