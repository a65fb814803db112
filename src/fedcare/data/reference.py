"""The generated reference of every clinical settings file, as ``fedcare config-reference
--file NAME`` prints it.

Each row comes from the file's schema (:func:`fedcare.core.settings.reference_rows`): the key as
the user writes it, its default and its description with the allowed values, so the reference
cannot drift from what the code accepts. Keys of a union's member carry its tag
(``features[source=measurement].unit``, ``[format=omop].omop``); ``[]`` marks an array of
tables (``[[columns]]``) and ``<name>`` a key the user chooses (``[windows.<name>]``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from pydantic import BaseModel

from fedcare.core.settings import ReferenceRow, reference_rows


def _contract() -> list[ReferenceRow]:
    from fedcare.data.contract import Contract

    return reference_rows(Contract)


def _index() -> list[ReferenceRow]:
    return [r for r in _contract() if r[0] == "index" or r[0].startswith("index.")]


def _tagged(models: tuple[type[BaseModel], ...], tag: str,
            shared: type[BaseModel] | None = None) -> list[ReferenceRow]:
    """Keys every member shares once (from ``shared``), then each member's own under its
    tag; the tag key itself lists every value."""
    from fedcare.core.settings import literal_values

    common = set(shared.model_fields) if shared is not None else set()
    rows = reference_rows(shared) if shared is not None else []
    values = [str(literal_values(m.model_fields[tag].annotation)[0]) for m in models]
    summaries = [f"{v} ({getattr(m, 'summary', '')})" if getattr(m, "summary", "") else v
                 for v, m in zip(values, models, strict=True)]
    rows.append((tag, "", f"One of: {'; '.join(summaries)}; the keys below depend on it."))
    for value, m in zip(values, models, strict=True):
        rows += [r for r in reference_rows(m, f"[{tag}={value}]")
                 if r[0].split(".", 1)[1].split(".")[0].split("[")[0] not in common | {tag}]
    return rows


def _source() -> list[ReferenceRow]:
    from fedcare.data.adapters.source import SOURCE_FORMATS, SourceBase

    return _tagged(SOURCE_FORMATS, "format", SourceBase)


def _csv_mapping() -> list[ReferenceRow]:
    from fedcare.data.adapters.csv_adapter import LongMapping, WideMapping, _Dated

    return _tagged((WideMapping, LongMapping), "layout", _Dated)


def _omop() -> list[ReferenceRow]:
    from fedcare.data.adapters.canonical import SYSTEMS
    from fedcare.data.adapters.omop import SOURCE_VALUE_COLUMNS
    from fedcare.data.adapters.source import OmopSource

    rows = [r for r in reference_rows(OmopSource) if r[0] in ("omop", "source_vocabulary")]
    for domain, (table, column) in SOURCE_VALUE_COLUMNS.items():
        rows.append((f"source_vocabulary.{domain}", "", (
            f"Code system of {table}.{column}: each row with one also becomes an event coded "
            f"in it (besides its OMOP concept id). One of: {', '.join(SYSTEMS)} (or an alias: "
            "icd-10-cm, http://loinc.org, ...).")))
    return rows


def _code_mapping() -> list[ReferenceRow]:
    """The site code mapping is a plain CSV (or TOML ``[[map]]`` tables), not a model."""
    from fedcare.data.adapters.canonical import SYSTEMS

    systems = ", ".join(SYSTEMS)
    return [
        ("source_system", "", f"System of the site's code. One of: {systems} (or an alias)."),
        ("source_code", "", "The site's code as its export writes it."),
        ("target_system", "", f"System of the standard code. One of: {systems}."),
        ("target_code", "", "The standard code events with the site's code count as (one row "
                            "per target; several rows map a code to several targets). From "
                            "RXNORM to RXNORM the row is a drug roll-up instead: clinical drug "
                            "source_code contains ingredient target_code, and keeps its code."),
    ]


#: file name -> (what it is, its rows). The names ``fedcare config-reference --file`` takes.
CLINICAL_FILES: Final[dict[str, tuple[str, Callable[[], list[ReferenceRow]]]]] = {
    "contract": ("data contract (.toml): features, label, index, windows, cohort, quality",
                 _contract),
    "index": ("the contract's [index] table: how each person's index date is chosen", _index),
    "source": ("site source file (source.toml): which adapter reads the site's data", _source),
    "csv-mapping": ("CSV/Parquet column mapping (.toml) named by a csv source's `mapping`",
                    _csv_mapping),
    "omop": ("an omop source's keys, with source_vocabulary per domain", _omop),
    "code-mapping": ("site code mapping (CSV columns, or TOML [[map]] keys) named by a "
                     "source's `code_mapping`", _code_mapping),
}


def clinical_reference(name: str) -> list[ReferenceRow]:
    """The rows of one clinical file's reference (``name``: a key of :data:`CLINICAL_FILES`)."""
    if name not in CLINICAL_FILES:
        from fedcare.core.errors import ConfigError

        raise ConfigError(f"no reference for {name!r}; use one of {list(CLINICAL_FILES)}")
    return CLINICAL_FILES[name][1]()
