"""``source = "clinical"``: each site's own clinical export (FHIR, OMOP, CSV) harmonized to
one data contract by the code a node runs (:mod:`fedcare.data.clinical`), so a study
simulated here runs unchanged on a federation."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, Self

from pydantic import Field

from fedcare.core.settings import Section
from fedcare.data.sources.base import DataOptions
from fedcare.data.sources.registry import register_source

if TYPE_CHECKING:
    from fedcare.core.dataset import SiteData
    from fedcare.data.clinical import ClinicalTable


class ClinicalSite(Section):
    name: str = Field(min_length=1, max_length=100, description="Site name.")
    source: Path = Field(description=(
        "The site's source file (source.toml: format csv|omop|fhir, its files and mappings; "
        "`fedcare config-reference --file source`), relative to the study file."))


@register_source
class ClinicalData(DataOptions):
    """Each site's own clinical export, harmonized to one data contract by the code a node
    runs (fedcare.data.clinical), so a study simulated here runs unchanged on a federation."""

    source: Literal["clinical"] = Field(description=(
        "Clinical exports (FHIR, OMOP, CSV) harmonized to a data contract, one per site."))
    contract: Path = Field(description=(
        "The data contract (.toml), relative to the study file; the features and the label "
        "are the contract's."))
    site: list[ClinicalSite] = Field(min_length=1, description=(
        "Sites: [[data.site]] name, source."))

    def resolved(self, base: Path) -> Self:
        clinical = [x.model_copy(update={"source": base / x.source}) for x in self.site]
        return self.model_copy(update={"contract": base / self.contract, "site": clinical})

    def declared_sites(self) -> int:
        return len(self.site)

    def tables(self) -> dict[str, ClinicalTable]:
        """Each site's table, built from its source file exactly as its node (and ``fedcare
        data build``) builds it; a site whose table fails the contract's quality rules stops
        the run, as its node would refuse to train."""
        from fedcare.core.errors import DataError
        from fedcare.data.clinical import build_clinical_table
        from fedcare.data.sources.split import unique_site_names

        unique_site_names([s.name for s in self.site])
        tables = {s.name: build_clinical_table(s.source, self.contract, s.name)
                  for s in self.site}
        for name, built in tables.items():
            if built.violations:
                raise DataError("its data fails the contract's minimum quality rules (a node "
                                "would refuse to train): " + "; ".join(built.violations),
                                site=name)
        return tables

    def build(self, seed: int) -> list[SiteData]:
        """The node's split (:func:`fedcare.node.site_data.clinical_site_data`): the same rows
        go to training and testing in simulation and deployment."""
        import numpy as np

        from fedcare.core.dataset import TaskType
        from fedcare.data.sources.split import finish, split_rows

        tables = self.tables()
        arrays = []
        for i, (name, built) in enumerate(tables.items()):
            x, y = built.arrays()
            tr, te = split_rows(np.arange(len(y)), self.test_fraction, seed, i)
            arrays.append((name, x[tr], y[tr], x[te], y[te]))
        features = next(iter(tables.values())).features
        return finish(arrays, features, TaskType.BINARY, 2, self.standardize)
