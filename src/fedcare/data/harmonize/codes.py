"""Code harmonization: normalised codes, code-set matching with prefixes, site-kept mappings.

Two sites rarely write a code the same way: ``I21.4`` and ``I214`` are the same ICD-10-CM code
(the dot is display punctuation, not part of the code); concept ids read from a CSV can come
back as ``3027114.0``. We normalise per system, then match a contract's code set with one
vectorised ``isin`` for exact codes and one ``str.startswith`` for prefix patterns (``I2*``),
per system -- never a Python loop over rows.

Local codes (a hospital's own lab catalogue) are translated by a *site mapping* file that stays
at the site (``source_system,source_code,target_system,target_code``): the federation learns
which contract features a site covers, never its internal catalogue.

**Drug roll-up (RxNorm clinical drug -> ingredient).** Prescriptions are coded as clinical
drugs (RxNorm term type SCD: "atorvastatin 80 MG Oral Tablet", 259255) while a contract lists
ingredients (IN: atorvastatin, 83367). Where a code set lists an RxNorm ingredient, a drug event
coded with a clinical drug *containing* that ingredient matches too (the event keeps its own
code, so a code set listing the clinical drug itself matches it as well). fedcare ships no
RxNorm database: it knows the small table :data:`RXNORM_INGREDIENTS` (the statins of the demo
contract, ``examples/contracts/cardio.toml``, in the tablets most often prescribed; the
synthetic generator codes ingredients directly), and a site adds its own pairs in its site
mapping: a row from ``RXNORM`` to ``RXNORM`` (``RXNORM,617310,RXNORM,83367``) reads "clinical
drug 617310 contains ingredient 83367" -- one row per ingredient of a combination product.
Not covered: branded drugs (SBD) and packs unless the site lists them, RxNorm's other
relations (dose form groups, ATC classes), and OMOP drug concepts (their roll-up is the CDM's
``concept_ancestor`` table; give a drug_source_value vocabulary, or map OMOP concepts to RxNorm
ingredients in the site mapping).
"""

from __future__ import annotations

import csv
import tomllib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from fedcare.core.errors import ConfigError
from fedcare.data.adapters.canonical import SYSTEMS

if TYPE_CHECKING:
    import pandas as pd

    from fedcare.data.contract import CodeSet

_NUMERIC_SYSTEMS = ("SNOMED", "RXNORM", "OMOP")
_DOTLESS_SYSTEMS = ("ICD10CM",)

#: Spellings of code systems found in the wild -> canonical name.
SYSTEM_ALIASES: dict[str, str] = {
    "loinc": "LOINC", "http://loinc.org": "LOINC",
    "snomed": "SNOMED", "snomedct": "SNOMED", "snomed ct": "SNOMED", "sct": "SNOMED",
    "http://snomed.info/sct": "SNOMED",
    "icd10cm": "ICD10CM", "icd-10-cm": "ICD10CM", "icd10": "ICD10CM", "icd-10": "ICD10CM",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD10CM",
    "rxnorm": "RXNORM", "http://www.nlm.nih.gov/research/umls/rxnorm": "RXNORM",
    "omop": "OMOP", "local": "LOCAL",
}


#: RxNorm clinical drug (SCD) -> its ingredient(s) (IN), the built-in roll-up table. RxCUIs as
#: NLM's RxNorm publishes them (ingredient: atorvastatin 83367, simvastatin 36567,
#: rosuvastatin 301542); a site adds its own in its site mapping (see the module docstring).
RXNORM_INGREDIENTS: Final[Mapping[str, tuple[str, ...]]] = {
    # atorvastatin oral tablets: 10, 20, 40 and 80 mg
    "617312": ("83367",), "617310": ("83367",), "617311": ("83367",), "259255": ("83367",),
    # simvastatin oral tablets: 10, 20 and 40 mg
    "314231": ("36567",), "312961": ("36567",), "198211": ("36567",),
    # rosuvastatin calcium oral tablets
    "859419": ("301542",), "859424": ("301542",), "859747": ("301542",),
    "859751": ("301542",),
}


@dataclass(frozen=True)
class DrugRollup:
    """Clinical drug -> ingredients, applied to code sets: a set listing an ingredient also
    matches every clinical drug known to contain it."""

    ingredients: Mapping[str, frozenset[str]]

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]]) -> DrugRollup:
        """From (clinical drug, ingredient) pairs, added to the built-in table."""
        table: dict[str, set[str]] = {d: set(i) for d, i in RXNORM_INGREDIENTS.items()}
        for drug, ingredient in pairs:
            table.setdefault(drug, set()).add(ingredient)
        return cls({d: frozenset(i) for d, i in table.items()})

    def clinical_drugs(self, ingredients: Iterable[str]) -> list[str]:
        """Every known clinical drug that contains one of ``ingredients``."""
        wanted = set(ingredients)
        return sorted(d for d, ins in self.ingredients.items() if ins & wanted)


BUILTIN_ROLLUP: Final = DrugRollup.of(())


def canonical_system(name: str) -> str:
    """Canonical system name for a spelling (``icd-10-cm`` -> ``ICD10CM``); ConfigError if
    unknown, because a silently unknown system would match nothing."""
    if name in SYSTEMS:
        return name
    key = name.strip().lower()
    if key in SYSTEM_ALIASES:
        return SYSTEM_ALIASES[key]
    raise ConfigError(f"unknown code system {name!r}; use one of {list(SYSTEMS)} "
                      f"(or a known alias: {sorted(SYSTEM_ALIASES)})")


def normalise_code(system: str, code: str) -> str:
    """One code's normalised form (see :func:`normalise_codes`)."""
    import pandas as pd

    return str(normalise_codes(pd.Series([system]), pd.Series([code])).iloc[0])


def normalise_codes(systems: pd.Series, codes: pd.Series) -> pd.Series:
    """Strip and upper-case every code; drop dots for ICD-10-CM; drop a float's ``.0`` for
    numeric systems (SNOMED, RxNorm, OMOP concept ids)."""
    import pandas as pd

    raw = pd.Series(codes, dtype=object)
    sys_ = pd.Series(systems, dtype=object).reindex(raw.index)
    out = pd.Series("", index=raw.index, dtype=object)
    # Work on each system's distinct codes only: a million events carry a few hundred codes.
    for system in sys_.unique():
        in_sys = (sys_ == system).to_numpy()
        inv, uniq = pd.factorize(raw[in_sys].fillna("").astype(str), sort=False)
        norm = pd.Series(uniq, dtype=object).astype(str).str.strip().str.upper()
        if system in _DOTLESS_SYSTEMS:
            norm = norm.str.replace(".", "", regex=False)
        elif system in _NUMERIC_SYSTEMS:
            norm = norm.str.replace(r"^(\d+)\.0+$", r"\1", regex=True)
        out[in_sys] = norm.to_numpy(dtype=object)[inv] if len(uniq) else ""
    return out


def _pattern(system: str, code: str) -> tuple[str, bool]:
    prefix = code.endswith("*")
    return normalise_code(system, code.rstrip("*")), prefix


def match_codes(systems: pd.Series, codes_norm: pd.Series, codeset: CodeSet, *,
                rollup: DrugRollup = BUILTIN_ROLLUP) -> pd.Series:
    """Boolean mask of rows whose (system, normalised code) is in ``codeset``; an RxNorm
    ingredient listed there also matches the clinical drugs ``rollup`` knows contain it."""
    import pandas as pd

    mask = pd.Series(False, index=codes_norm.index)
    present = set(systems.unique())
    for system, patterns in codeset.by_system().items():
        if system not in present:
            continue
        in_sys = systems == system
        if not in_sys.any():
            continue
        parsed = [_pattern(system, p) for p in patterns]
        exact = [c for c, pre in parsed if not pre]
        if system == "RXNORM":
            exact += rollup.clinical_drugs(exact)
        prefixes = tuple(c for c, pre in parsed if pre)
        sub = codes_norm[in_sys]
        hit = sub.isin(exact)
        if prefixes:
            hit |= sub.str.startswith(prefixes)
        mask[in_sys] = hit
    return mask


@dataclass(frozen=True)
class SiteMapping:
    """Local code -> standard code pairs, kept at the site. Applied before code matching.

    A pair from RxNorm to RxNorm is a roll-up (clinical drug -> ingredient, see the module
    docstring): it does not replace the event's code, it extends :meth:`rollup`."""

    pairs: tuple[tuple[str, str, str, str], ...]
    source: str = ""

    @classmethod
    def load(cls, path: str | Path) -> SiteMapping:
        """CSV with a header ``source_system,source_code,target_system,target_code``, or TOML
        with ``[[map]]`` tables of the same four keys."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"site mapping file {p} does not exist", source=str(p))
        try:
            if p.suffix.lower() == ".toml":
                rows = tomllib.loads(p.read_text(encoding="utf-8")).get("map", [])
            else:
                with p.open(newline="", encoding="utf-8") as fh:
                    rows = list(csv.DictReader(fh))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, csv.Error) as exc:
            raise ConfigError(f"cannot read site mapping: {exc}", source=str(p)) from None
        return cls.from_rows(rows, source=str(p))

    @classmethod
    def from_rows(cls, rows: list[dict[str, str]] | list, *, source: str = "") -> SiteMapping:
        keys = ("source_system", "source_code", "target_system", "target_code")
        problems, pairs = [], []
        for i, row in enumerate(rows, start=1):
            if not isinstance(row, dict) or any(not str(row.get(k) or "").strip() for k in keys):
                problems.append(f"row {i}: needs non-empty {', '.join(keys)}")
                continue
            try:
                ss = canonical_system(row["source_system"])
                ts = canonical_system(row["target_system"])
            except ConfigError as exc:
                problems.append(f"row {i}: {exc.problems[0]}")
                continue
            pairs.append((ss, normalise_code(ss, row["source_code"]), ts,
                          normalise_code(ts, row["target_code"])))
        if problems:
            raise ConfigError(problems, source=source or None)
        return cls(tuple(dict.fromkeys(pairs)), source)

    def apply(self, events: pd.DataFrame) -> tuple[pd.DataFrame, Counter[str]]:
        """Events with mapped (system, code) replaced by their targets (a code mapped to
        several targets yields one row per target); returns the count of rows mapped per
        source system. ``events.code`` must already be normalised."""
        import pandas as pd

        counts: Counter[str] = Counter()
        pairs = [p for p in self.pairs if not _is_rollup(p)]
        if not pairs or events.empty:
            return events, counts
        table = pd.DataFrame(pairs,
                             columns=["system", "code", "_tsys", "_tcode"]).astype(object)
        merged = events.merge(table, on=["system", "code"], how="left", sort=False)
        hit = merged["_tsys"].notna()
        counts.update(merged.loc[hit, "system"].value_counts().to_dict())
        merged.loc[hit, "system"] = merged.loc[hit, "_tsys"]
        merged.loc[hit, "code"] = merged.loc[hit, "_tcode"]
        return merged.drop(columns=["_tsys", "_tcode"]), counts

    def rollup(self) -> DrugRollup:
        """The built-in drug roll-up plus this site's RxNorm -> RxNorm pairs."""
        return DrugRollup.of((p[1], p[3]) for p in self.pairs if _is_rollup(p))


def _is_rollup(pair: tuple[str, str, str, str]) -> bool:
    return pair[0] == "RXNORM" and pair[2] == "RXNORM"


@dataclass
class CoverageCounter:
    """Matched events per (code set name, system): what the quality report calls coverage."""

    matched: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, name: str, systems: pd.Series) -> None:
        self.matched.setdefault(name, Counter()).update(systems.value_counts().to_dict())
