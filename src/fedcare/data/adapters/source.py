"""The site source file: which adapter reads this site's data, from where, with what mapping.

A small TOML kept at the site beside the data (paths are relative to it)::

    site = "hospital-3"
    format = "csv"                     # csv | omop | fhir
    paths = ["export.csv"]             # csv wide: tables; fhir: bundles / NDJSON / folders
    mapping = "mapping.toml"           # csv: column mapping (see csv_adapter)
    persons = "patients.csv"           # csv long only
    events = ["events.csv"]            # csv long only
    omop = "omop/"                     # omop: folder of CDM tables or a .duckdb file
    source_vocabulary = { condition = "ICD10CM" }   # omop only
    code_mapping = "local_codes.csv"   # optional site code mapping (harmonize.codes)
    index_date = 2020-01-01            # optional, for a fixed_date contract without a date

The FHIR reader (:mod:`fedcare.data.adapters.fhir`) is imported only when used.
"""

from __future__ import annotations

import datetime as dt
from abc import abstractmethod
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field, TypeAdapter

from fedcare.core.errors import ConfigError
from fedcare.core.settings import Section, load_toml
from fedcare.data.adapters.canonical import CanonicalRecords
from fedcare.data.harmonize.codes import SiteMapping


class SourceBase(Section):
    """What every source file says, whatever its format; each format declares its own keys
    (one class below each), so a key of another format is refused by name."""

    site: str = Field("site", min_length=1, max_length=100, description=(
        "The site's name, shown in quality reports."))
    code_mapping: Path | None = Field(None, description=(
        "Optional CSV mapping the site's local codes to standard ones (harmonize.codes)."))
    index_date: dt.date | None = Field(None, description=(
        "For a contract with a fixed_date index rule that names no date."))
    base: Path = Field(Path("."), exclude=True)
    summary: ClassVar[str] = ""

    def resolve(self, p: Path) -> Path:
        return p if p.is_absolute() else self.base / p

    def site_mapping(self) -> SiteMapping | None:
        return SiteMapping.load(self.resolve(self.code_mapping)) if self.code_mapping else None

    @abstractmethod
    def load(self) -> CanonicalRecords:
        """Run this format's adapter."""


class CsvSource(SourceBase):
    summary: ClassVar[str] = "CSV or Parquet tables, wide or long, with a column mapping"
    format: Literal["csv"] = Field(description="csv: tables read through a column mapping.")
    mapping: Path = Field(description="csv: the column mapping TOML (see csv_adapter).")
    paths: tuple[Path, ...] = Field((), description="csv wide: the tables.")
    persons: Path | None = Field(None, description="csv long: the persons table.")
    events: tuple[Path, ...] = Field((), description="csv long: the event tables.")

    def load(self) -> CanonicalRecords:
        from fedcare.data.adapters.csv_adapter import (
            LongMapping,
            load_long,
            load_mapping,
            load_wide,
        )

        m = load_mapping(self.resolve(self.mapping))
        if isinstance(m, LongMapping):
            if self.persons is None or not self.events:
                raise ConfigError("a long CSV mapping needs persons = ... and events = [...]")
            return load_long(self.resolve(self.persons), [self.resolve(p) for p in self.events],
                             m)
        if not self.paths:
            raise ConfigError("a wide CSV mapping needs paths = [...]")
        return load_wide([self.resolve(p) for p in self.paths], m)


class OmopSource(SourceBase):
    summary: ClassVar[str] = "OMOP CDM v5.4 tables (CSV/Parquet folder or a DuckDB file)"
    format: Literal["omop"] = Field(description="omop: an OMOP CDM export.")
    omop: Path = Field(description="omop: folder of CDM tables or a .duckdb file.")
    source_vocabulary: dict[str, str] = Field(default_factory=dict, description=(
        "omop: the code system of each domain's *_source_value column, e.g. { condition = "
        "\"ICD10CM\", drug = \"RXNORM\" }: each row then also counts as a code in that "
        "system, so a contract listing ICD-10-CM or RxNorm codes matches a site whose concept "
        "ids it does not list (`fedcare config-reference --file omop`)."))

    def load(self) -> CanonicalRecords:
        from fedcare.data.adapters.omop import load_omop

        return load_omop(self.resolve(self.omop), source_vocabulary=self.source_vocabulary)


class FhirSource(SourceBase):
    summary: ClassVar[str] = "FHIR R4 Bundles or bulk NDJSON"
    format: Literal["fhir"] = Field(description="fhir: FHIR R4 resources.")
    paths: tuple[Path, ...] = Field(min_length=1, description=(
        "fhir: Bundles, NDJSON files or folders of them."))

    def load(self) -> CanonicalRecords:
        from fedcare.data.adapters.fhir import load_fhir

        return load_fhir([self.resolve(p) for p in self.paths])


#: Every source format, declared once: the file's schema, its reference and its loader.
SOURCE_FORMATS: tuple[type[SourceBase], ...] = (CsvSource, OmopSource, FhirSource)
SiteSource = Annotated[CsvSource | OmopSource | FhirSource, Field(discriminator="format")]
_ADAPTER: TypeAdapter[SiteSource] = TypeAdapter(SiteSource)


def load_source(path: str | Path) -> SourceBase:
    p = Path(path)
    source: SourceBase = load_toml(p, _ADAPTER, what="site source file",
                                   tags={"csv", "omop", "fhir"}, extra={"base": p.parent})
    return source
