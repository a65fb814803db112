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
from pathlib import Path
from typing import Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from fedcare.core.errors import ConfigError
from fedcare.core.files import read_toml
from fedcare.data.adapters.canonical import CanonicalRecords
from fedcare.data.harmonize.codes import SiteMapping


class SiteSource(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    site: str = Field("site", min_length=1, max_length=100)
    format: Literal["csv", "omop", "fhir"]
    paths: tuple[Path, ...] = ()
    mapping: Path | None = None
    persons: Path | None = None
    events: tuple[Path, ...] = ()
    omop: Path | None = None
    source_vocabulary: dict[str, str] = Field(default_factory=dict)
    code_mapping: Path | None = None
    index_date: dt.date | None = None
    base: Path = Field(Path("."), exclude=True)

    def resolve(self, p: Path) -> Path:
        return p if p.is_absolute() else self.base / p

    def site_mapping(self) -> SiteMapping | None:
        return SiteMapping.load(self.resolve(self.code_mapping)) if self.code_mapping else None

    def load(self) -> CanonicalRecords:
        """Run the configured adapter."""
        if self.format == "omop":
            from fedcare.data.adapters.omop import load_omop

            if self.omop is None:
                raise ConfigError("format 'omop' needs omop = <folder or .duckdb file>")
            return load_omop(self.resolve(self.omop), source_vocabulary=self.source_vocabulary)
        if self.format == "fhir":
            from fedcare.data.adapters.fhir import load_fhir

            if not self.paths:
                raise ConfigError("format 'fhir' needs paths = [...]")
            return load_fhir([self.resolve(p) for p in self.paths])
        from fedcare.data.adapters.csv_adapter import (
            LongMapping,
            load_long,
            load_mapping,
            load_wide,
        )

        if self.mapping is None:
            raise ConfigError("format 'csv' needs mapping = <column mapping TOML>")
        m = load_mapping(self.resolve(self.mapping))
        if isinstance(m, LongMapping):
            if self.persons is None or not self.events:
                raise ConfigError("a long CSV mapping needs persons = ... and events = [...]")
            return load_long(self.resolve(self.persons), [self.resolve(p) for p in self.events],
                             m)
        if not self.paths:
            raise ConfigError("a wide CSV mapping needs paths = [...]")
        return load_wide([self.resolve(p) for p in self.paths], m)


def load_source(path: str | Path) -> SiteSource:
    p = Path(path)
    raw = read_toml(p, "site source file")
    try:
        return SiteSource.model_validate({**raw, "base": p.parent})
    except pydantic.ValidationError as exc:
        raise ConfigError([f"'{'.'.join(map(str, e['loc']))}': {e['msg']}"
                           for e in exc.errors()], source=str(p)) from None
