"""``source = "federation"``: data held by a federation's nodes; each node maps ``dataset`` to
its own local table (:mod:`fedcare.node.site_data`). Nothing is built in this process."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, field_validator

from fedcare.data.sources.base import MAX_CLASSES, DataCapabilities, DataOptions
from fedcare.data.sources.registry import register_source

if TYPE_CHECKING:
    from fedcare.core.dataset import SiteData


@register_source
class FederatedData(DataOptions):
    """A networked study: each node maps ``dataset`` to its own local table."""

    source: Literal["federation"] = Field(description="Data held by the federation's nodes.")
    dataset: str = Field(min_length=1, description="Dataset name each node maps to a local file.")
    label: str = Field(min_length=1, description="Label column (present at every site).")
    features: list[str] = Field(default_factory=list, description=(
        "Feature columns, in order (explicit, so every site trains on the same problem); "
        "empty for an image dataset."))
    image_size: int | None = Field(None, ge=8, le=1024, description=(
        "Image datasets: each node maps the dataset to a folder of DICOM/NIfTI images with a "
        "label file, resized and centre-cropped to image_size x image_size."))
    task: Literal["binary", "multiclass", "regression"] = Field(
        "binary", description="binary, multiclass or regression.")
    classes: int = Field(2, ge=2, le=MAX_CLASSES, description="Number of classes (multiclass).")
    standardize: bool = Field(True, description=(
        "Scale features by the federation's mean/std, computed from each site's sums, sums "
        "of squares and row counts (no row leaves a site; sites refuse below 10 rows). A "
        "secure study sends them through secure aggregation (the hub learns only the "
        "federation's totals); a DP study clips them to data.stats_clip and noises them "
        "(privacy.stats_epsilon)."))
    sites: list[str] | None = Field(None, description=(
        "Sites taking part (default: every site that holds the dataset)."))
    contract_hash: str | None = Field(None, pattern=r"^[0-9a-fA-F]{8,64}$", description=(
        "Content hash of the data contract every site must have built its dataset with "
        "(`fedcare data check` prints all 64 hex digits), or a prefix of it of at least 8: "
        "a site whose contract's hash does not start with it refuses, and the hub refuses a "
        "prefix that matches two different contracts among the sites. The full hash is the "
        "safe choice: a prefix selects, it does not pin the contract down."))

    capabilities: ClassVar[DataCapabilities] = DataCapabilities(simulated=False,
                                                                raw_columns=True)

    def input_width(self) -> int:
        """Width of a table's model input: one column per numeric feature and
        ``max_levels`` one-hot columns per categorical one (known before any site answers)."""
        cat = set(self.categorical)
        return sum(self.max_levels if f in cat else 1 for f in self.features)

    @field_validator("contract_hash")
    @classmethod
    def _lower(cls, v: str | None) -> str | None:
        return v.lower() if v is not None else None

    def problems(self) -> list[str]:
        problems = []
        if self.image_size is None and not self.features:
            problems.append("'data.features': list the feature columns (or set "
                            "data.image_size for an image dataset)")
        unknown = [c for c in self.categorical if c not in self.features]
        if unknown:
            problems.append(f"'data.categorical': {unknown} are not in data.features")
        if self.image_size is not None and (self.features or self.standardize):
            problems.append("'data.image_size': an image dataset takes no features and "
                            "standardize = false (images are scaled to [0, 1])")
        return problems

    def declared_sites(self) -> int | None:
        return len(self.sites) if self.sites is not None else None

    def declared_task(self) -> str:
        return self.task

    def declared_features(self) -> list[str]:
        return list(self.features)

    def build(self, seed: int) -> list[SiteData]:
        from fedcare.core.errors import ConfigError

        raise ConfigError("data.source = 'federation' runs on a hub and its nodes: use "
                          "`fedcare study submit`; simulate needs local data")
