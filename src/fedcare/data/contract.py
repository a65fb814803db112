"""Data contracts: what a study needs from every site's data, as a versioned, hashed TOML file.

A federated study can only pool what means the same thing at every site. The contract pins that
meaning down -- which concepts (in several code systems, so a SNOMED site and an ICD-10 site
both match), in which canonical unit, over which time window relative to which index date,
aggregated how, what counts as the label, who is in the cohort, and what quality a site's data
must reach before it may train. Sites approve a contract by its content hash, as they approve a
study (:func:`fedcare.config.content_hash`): the same hash means the same feature definitions.

The structure mirrors how observational studies are specified in the OHDSI framework (cohort
entry event = index date, observation windows, outcome window; Hripcsak et al., *Observational
Health Data Sciences and Informatics*, Stud Health Technol Inform 2015) without requiring OMOP.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedcare.core.errors import ConfigError
from fedcare.core.files import read_toml
from fedcare.data.adapters.canonical import SYSTEMS

CONTRACT_SCHEMA: Literal[1] = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Aggregation(StrEnum):
    LAST = "last"
    MEAN = "mean"
    MIN = "min"
    MAX = "max"
    COUNT = "count"


_CODE = re.compile(r"^[A-Za-z0-9.\-_]+\*?$")


_PREFIX = " A trailing * matches a prefix (I2*)."


class CodeSet(_Model):
    """Codes per canonical system; a trailing ``*`` is a prefix match (``I2*``). An RxNorm
    ingredient also matches the clinical drugs that contain it
    (:mod:`fedcare.data.harmonize.codes`, drug roll-up)."""

    LOINC: tuple[str, ...] = Field((), description="LOINC codes (8480-6)." + _PREFIX)
    SNOMED: tuple[str, ...] = Field((), description="SNOMED CT concept ids." + _PREFIX)
    ICD10CM: tuple[str, ...] = Field((), description=(
        "ICD-10-CM codes, with or without the dot (I21.4 = I214)." + _PREFIX))
    RXNORM: tuple[str, ...] = Field((), description=(
        "RxNorm codes; an ingredient (IN) also matches the clinical drugs (SCD) containing it: "
        "a built-in table for common statins plus the site's RXNORM->RXNORM code_mapping "
        "rows." + _PREFIX))
    OMOP: tuple[str, ...] = Field((), description=(
        "OMOP standard concept ids (*_concept_id columns)." + _PREFIX))
    LOCAL: tuple[str, ...] = Field((), description=(
        "A site's own codes (better mapped to a standard system at the site)." + _PREFIX))

    @field_validator("*")
    @classmethod
    def _codes_wellformed(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [c for c in v if not _CODE.match(c.strip())]
        if bad:
            raise ValueError(f"malformed code(s) {bad}: letters, digits, '.', '-', '_' and an "
                             "optional trailing '*' only")
        return tuple(c.strip() for c in v)

    def systems(self) -> tuple[str, ...]:
        """Systems with at least one code, in canonical order."""
        return tuple(s for s in SYSTEMS if getattr(self, s))

    def by_system(self) -> dict[str, tuple[str, ...]]:
        return {s: getattr(self, s) for s in self.systems()}


def _nonempty(codes: CodeSet, what: str) -> CodeSet:
    if not codes.systems():
        raise ValueError(f"{what} needs at least one code in some system")
    return codes


class MissingPolicy(_Model):
    """Parsed form of ``missing = "drop_row" | "impute_mean" | "impute_value:x" | "flag"``.

    ``impute_mean`` uses the federation mean when the caller passes one (computed from per-site
    sums, :func:`fedcare.data.standardize.federated_standardizer`'s pooling rule) and the site's
    own mean otherwise -- the feature table records which. ``flag`` imputes the same way and
    adds a 0/1 column ``<name>_missing`` so a model can learn from missingness itself.
    """

    kind: Literal["drop_row", "impute_mean", "impute_value", "flag"]
    value: float | None = Field(default=None, allow_inf_nan=False)

    def __repr__(self) -> str:  # as the contract writes it (the generated reference shows it)
        return repr(self.kind if self.value is None else f"{self.kind}:{self.value:g}")

    @model_validator(mode="after")
    def _value(self) -> MissingPolicy:
        if (self.kind == "impute_value") != (self.value is not None):
            raise ValueError("impute_value (and only it) takes a value")
        return self

    @classmethod
    def parse(cls, text: str) -> MissingPolicy:
        if text.startswith("impute_value:"):
            raw = text.split(":", 1)[1]
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"impute_value needs a number after ':' (got {raw!r})") from None
            if not math.isfinite(value):
                raise ValueError(f"impute_value needs a finite number (got {raw!r}): NaN would "
                                 "leave the value missing and inf would break every model")
            return cls(kind="impute_value", value=value)
        if text in ("drop_row", "impute_mean", "flag"):
            return cls(kind=text)  # type: ignore[arg-type]
        raise ValueError(f"unknown missing policy {text!r}; use drop_row, impute_mean, "
                         "impute_value:<number> or flag")


def _missing(v: Any) -> Any:
    return MissingPolicy.parse(v) if isinstance(v, str) else v


MissingField = Annotated[MissingPolicy, pydantic.BeforeValidator(_missing)]


class _Feature(_Model):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=60,
                      description="Column name in the feature table.")


class AgeFeature(_Feature):
    """Age at index in completed years (floor of days / 365.25 is *not* used: birthdays count,
    as clinicians compute age)."""

    source: Literal["age"] = Field(description="age: completed years at the index date.")
    kind: Literal["numeric"] = Field("numeric", description="Always numeric.")
    unit: Literal["year"] = Field("year", description="Always years.")
    range: tuple[float, float] = Field((0.0, 130.0), description=(
        "[min, max] plausible ages; outside it the value is discarded (counted)."))
    missing: MissingField = Field(MissingPolicy(kind="drop_row"), description=(
        "When a person has no usable value: drop_row (leave the cohort, counted), "
        "impute_mean (the federation's mean), impute_value:<number>, or flag (impute the mean "
        "and add a 0/1 column <name>_missing)."))


class SexFeature(_Feature):
    """``binary``: 1 when sex equals ``value`` (unknown -> 0). ``categorical``: one 0/1 column
    ``<name>_<category>`` per category, in the order given."""

    source: Literal["sex"] = Field(description="sex: the person's recorded sex.")
    kind: Literal["binary", "categorical"] = Field("binary", description=(
        "binary: one 0/1 column (1 when sex is `value`); categorical: one 0/1 column "
        "<name>_<category> per category."))
    value: Literal["female", "male", "other"] = Field("female", description=(
        "binary: the sex coded 1 (unknown sex is 0)."))
    categories: tuple[Literal["female", "male", "other", "unknown"], ...] = Field((), description=(
        "categorical: the categories, in column order (at least two)."))

    @model_validator(mode="after")
    def _cats(self) -> SexFeature:
        if self.kind == "categorical" and len(self.categories) < 2:
            raise ValueError("a categorical sex feature needs at least two categories")
        return self


class MeasurementFeature(_Feature):
    source: Literal["measurement"] = Field(description=(
        "measurement: a numeric value (lab, vital sign) aggregated over a window."))
    kind: Literal["numeric"] = Field("numeric", description="Always numeric.")
    codes: CodeSet = Field(description="The measurement's codes, per code system.")
    unit: str = Field(description="Canonical unit (pint-parsable, UCUM-ish: mm[Hg], mmol/L).")
    analyte: str | None = Field(None, description="Analyte for mass<->molar conversions "
                                "(see fedcare.data.harmonize.units.MOLAR_MASS).")
    range: tuple[float, float] = Field(description=(
        "[min, max] plausible values in the canonical unit; outside it a value is discarded "
        "(counted)."))
    aggregation: Aggregation = Field(Aggregation.LAST, description=(
        "How the window's values become one: last, mean, min, max or count."))
    window: str = Field(description="Name of a window in [windows].")
    missing: MissingField = Field(MissingPolicy(kind="drop_row"), description=(
        "When a person has no usable value: drop_row (leave the cohort, counted), "
        "impute_mean (the federation's mean), impute_value:<number>, or flag (impute the mean "
        "and add a 0/1 column <name>_missing)."))

    @field_validator("codes")
    @classmethod
    def _codes_nonempty(cls, v: CodeSet) -> CodeSet:
        return _nonempty(v, "a measurement feature")


class PresenceFeature(_Feature):
    """1 when any event of the domain with a code in ``codes`` starts inside the window."""

    source: Literal["condition", "drug"] = Field(description=(
        "condition or drug: 1 when such an event with one of the codes starts in the window."))
    kind: Literal["binary"] = Field("binary", description="Always binary (0/1).")
    codes: CodeSet = Field(description="The condition's or drug's codes, per code system.")
    window: str = Field(description="Name of a window in [windows].")

    @field_validator("codes")
    @classmethod
    def _codes_nonempty(cls, v: CodeSet) -> CodeSet:
        return _nonempty(v, "a presence feature")


Feature = Annotated[AgeFeature | SexFeature | MeasurementFeature | PresenceFeature,
                    Field(discriminator="source")]


class Window(_Model):
    """Days before the index date (inclusive of the index day); ``days_before`` omitted means
    any time before (and on) the index date."""

    days_before: int | None = Field(None, ge=0, le=100 * 366, description=(
        "The window is [index - days_before, index day]; omitted: any time up to the index "
        "day."))


class IndexRule(_Model):
    """``first_encounter``: the first encounter starting in ``[start, end]`` (persons without one
    leave the cohort, counted). ``fixed_date``: ``date``, or the site's own date when the site
    source file sets ``index_date`` (e.g. a registry's enrolment day)."""

    rule: Literal["first_encounter", "fixed_date"] = Field(description=(
        "first_encounter: each person's first encounter in [start, end] (needs start, end); "
        "fixed_date: the same date for everyone (date, or the site's index_date)."))
    start: dt.date | None = Field(None, description="first_encounter: first day searched.")
    end: dt.date | None = Field(None, description="first_encounter: last day searched.")
    date: dt.date | None = Field(None, description=(
        "fixed_date: the index date; omitted, each site sets index_date in its source file."))

    @model_validator(mode="after")
    def _fields(self) -> IndexRule:
        if self.rule == "first_encounter":
            if self.start is None or self.end is None or self.date is not None:
                raise ValueError("rule 'first_encounter' needs start and end (and no date)")
            if self.end < self.start:
                raise ValueError("index end is before start")
        elif self.start is not None or self.end is not None:
            raise ValueError("rule 'fixed_date' takes date only (or a site-provided date)")
        return self


class Label(_Model):
    """1 when an event of ``source`` with a code in ``codes`` starts within ``days_after`` days
    after the index date (index day excluded), else 0."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description=(
        "Label column name (lower case, digits, _)."))
    source: Literal["condition", "drug", "measurement"] = Field("condition", description=(
        "The kind of event that makes the label 1."))
    codes: CodeSet = Field(description="The outcome's codes, per code system.")
    days_after: int = Field(ge=1, le=100 * 366, description=(
        "Outcome window: (index day, index + days_after]."))

    @field_validator("codes")
    @classmethod
    def _codes_nonempty(cls, v: CodeSet) -> CodeSet:
        return _nonempty(v, "the label")


class PriorExclusion(_Model):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description=(
        "Name of the exclusion (shown in the attrition counts)."))
    source: Literal["condition", "drug"] = Field("condition", description=(
        "The kind of event that excludes."))
    codes: CodeSet = Field(description=(
        "A person with such an event on or before the index day leaves the cohort."))

    @field_validator("codes")
    @classmethod
    def _codes_nonempty(cls, v: CodeSet) -> CodeSet:
        return _nonempty(v, "an exclusion")


class Cohort(_Model):
    age: tuple[float, float] | None = Field(None, description="Inclusive age range at index.")
    require: tuple[str, ...] = Field((), description="Measurement features a person must have "
                                     "(before the missing policy applies).")
    exclude_prior: tuple[PriorExclusion, ...] = Field((), description=(
        "[[cohort.exclude_prior]] tables: history that excludes a person."))

    @field_validator("age")
    @classmethod
    def _age_range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None:
            lo, hi = v
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError(f"cohort age bounds must be finite numbers (got {list(v)})")
            if lo > hi:
                raise ValueError(f"cohort age range [{lo:g}, {hi:g}]: the lower bound is above "
                                 "the upper one, so nobody would be in the cohort")
        return v


class QualityRules(_Model):
    min_rows: int = Field(1, ge=1, description="Minimum cohort rows after every rule.")
    max_missing: float = Field(1.0, ge=0, le=1,
                               description="Maximum share of missing values per feature.")
    max_missing_by_feature: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=dict, description="Per-feature share in [0, 1]; overrides max_missing.")
    min_label_count: int = Field(0, ge=0, description="Minimum rows of each label class.")
    require_code_coverage: bool = Field(True, description="A coded feature with no matching "
                                        "event at the site is a violation (likely unmapped).")


class Contract(_Model):
    schema_version: Literal[1] = Field(CONTRACT_SCHEMA, description=(
        "Version of this file format."))
    name: str = Field(min_length=1, max_length=100, description="The contract's name.")
    version: str = Field(pattern=r"^\d+\.\d+(\.\d+)?$", description=(
        "Its version (1.0 or 1.0.0); any change also changes the content hash sites approve."))
    description: str = Field("", description="What the study predicts, for people.")
    index: IndexRule = Field(description="[index]: each person's index date.")
    windows: dict[str, Window] = Field(description=(
        "[windows.<name>]: look-back windows features refer to by name."))
    features: tuple[Feature, ...] = Field(min_length=1, description=(
        "[[features]]: the model's inputs, in column order; `source` chooses the kind."))
    label: Label = Field(description="[label]: the outcome.")
    cohort: Cohort = Field(default_factory=Cohort,  # type: ignore[arg-type]
                           description="[cohort]: who is in the study.")
    quality: QualityRules = Field(default_factory=QualityRules,  # type: ignore[arg-type]
                                  description="[quality]: the minimum a site's table must meet "
                                              "before it may train.")

    @model_validator(mode="after")
    def _references(self) -> Contract:
        problems = []
        names = [f.name for f in self.features]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            problems.append(f"duplicate feature name(s) {dup}")
        if self.label.name in names:
            problems.append(f"label name {self.label.name!r} is also a feature name")
        for f in self.features:
            if (isinstance(f, (MeasurementFeature, PresenceFeature))
                    and f.window not in self.windows):
                problems.append(f"feature {f.name!r}: unknown window {f.window!r} "
                                f"(known: {sorted(self.windows)})")
            if isinstance(f, (MeasurementFeature, AgeFeature)) and f.range[0] >= f.range[1]:
                problems.append(f"feature {f.name!r}: range min must be below max")
        numeric = {f.name for f in self.features if isinstance(f, MeasurementFeature)}
        for r in self.cohort.require:
            if r not in numeric:
                problems.append(f"cohort.require: {r!r} is not a measurement feature")
        for k in self.quality.max_missing_by_feature:
            if k not in names:
                problems.append(f"quality.max_missing_by_feature: unknown feature {k!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(feature_columns(self))

    def systems(self) -> tuple[str, ...]:
        """Every code system the contract refers to (features, label, exclusions)."""
        used: set[str] = set()
        for cs in coded_sets(self).values():
            used.update(cs.systems())
        return tuple(s for s in SYSTEMS if s in used)


def feature_columns(contract: Contract) -> list[str]:
    """Columns of the feature table, in order (categorical and ``flag`` features expand)."""
    cols: list[str] = []
    for f in contract.features:
        if isinstance(f, SexFeature) and f.kind == "categorical":
            cols.extend(f"{f.name}_{c}" for c in f.categories)
            continue
        cols.append(f.name)
        if isinstance(f, (MeasurementFeature, AgeFeature)) and f.missing.kind == "flag":
            cols.append(f"{f.name}_missing")
    return cols


def coded_sets(contract: Contract) -> dict[str, CodeSet]:
    """Name -> code set for every coded part of the contract (features, label, exclusions)."""
    out: dict[str, CodeSet] = {f.name: f.codes for f in contract.features
                               if isinstance(f, (MeasurementFeature, PresenceFeature))}
    out[contract.label.name] = contract.label.codes
    for ex in contract.cohort.exclude_prior:
        out[f"exclude:{ex.name}"] = ex.codes
    return out


def contract_hash(contract: Contract) -> str:
    """SHA-256 of the contract's canonical JSON: what a site approves."""
    blob = json.dumps(contract.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def parse_contract(raw: Mapping[str, Any], *, source: str | None = None) -> Contract:
    try:
        return Contract.model_validate(dict(raw))
    except pydantic.ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown key '{loc}'")
            elif err["type"] == "missing":
                problems.append(f"missing key '{loc}'")
            else:
                problems.append(f"'{loc}': {err['msg']}" if loc else err["msg"])
        raise ConfigError(problems, source=source) from None


def load_contract(path: str | Path) -> Contract:
    """Read and validate a contract TOML file (:class:`ConfigError` lists every problem)."""
    p = Path(path)
    raw = read_toml(p, "contract file")
    return parse_contract(raw, source=str(p))
