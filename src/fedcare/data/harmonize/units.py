"""Unit harmonization: UCUM-ish unit strings -> the contract's canonical unit, via pint.

Sites write the same quantity in different units (cholesterol in mg/dL in the US, mmol/L in
Europe) and different spellings (``mm[Hg]``, ``mmHg``; ``umol/L``, ``µmol/L``). We parse the
UCUM forms clinical systems emit (Schadow & McDonald, *The Unified Code for Units of Measure*,
Regenstrief) into pint expressions, and convert mass <-> amount concentrations with the
analyte's molar mass (mass conc. = molar conc. x M). Conversion runs once per *distinct unit*
of a column, on the whole group of values as a numpy array, never row by row.

A unit that cannot be parsed, or is not convertible to the target (even with the analyte's
molar mass), is never guessed: those rows become missing and are counted by reason and unit.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from fedcare.core.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd
    import pint

#: g/mol. Cholesterol fractions (total, HDL, LDL) are all reported as cholesterol; triglycerides
#: as triolein (the convention behind the 88.57 mg/dL per mmol/L factor); urea as urea (BUN
#: reported as nitrogen needs "urea_nitrogen", 2 N atoms).
MOLAR_MASS: dict[str, float] = {
    "cholesterol": 386.65,
    "glucose": 180.16,
    "creatinine": 113.12,
    "triglycerides": 885.7,
    "urea": 60.06,
    "urea_nitrogen": 28.014,
    "uric_acid": 168.11,
    "bilirubin": 584.66,
    "calcium": 40.078,
    "magnesium": 24.305,
    "phosphate": 30.974,
    "iron": 55.845,
    "albumin": 66_500.0,
    "hemoglobin": 16_114.5,  # per monomer (haem unit), the SI convention for Hb in mmol/L
}

REASON_MISSING_UNIT = "missing unit"
REASON_UNKNOWN_UNIT = "unit not recognised"
REASON_INCOMPATIBLE_UNIT = "unit incompatible with target"
REASON_NO_VALUE = "measurement without numeric value"

_POWER = re.compile(r"10[*^](-?\d+)")
_ANNOTATION = re.compile(r"\{[^}]*\}")


@lru_cache(maxsize=1)
def registry() -> pint.UnitRegistry:
    """The one unit registry (building one costs ~0.3 s), with clinical units added."""
    import pint

    ureg: pint.UnitRegistry = pint.UnitRegistry(cache_folder=None)
    ureg.define("international_unit = [international_unit] = IU")
    ureg.define("enzyme_unit_clinical = [enzyme_unit] = U_clin")
    return ureg


def normalise_unit(text: str) -> str:
    """UCUM-ish spelling -> a pint expression (``mm[Hg]`` -> ``mmHg``, ``10*3/uL`` ->
    ``1e3/uL``, ``µmol/L`` -> ``umol/L``, ``[iU]/L`` -> ``IU/L``, ``%`` -> ``percent``)."""
    t = _ANNOTATION.sub("", text.strip())
    t = t.replace("µ", "u").replace("μ", "u")
    t = t.replace("[Hg]", "Hg").replace("[iU]", "IU").replace("[IU]", "IU")
    t = _POWER.sub(lambda m: f"1e{m.group(1)}", t)
    t = t.replace("%", "percent")
    if t in ("", "1"):
        return "dimensionless" if t == "1" else ""
    return t


@lru_cache(maxsize=4096)
def parse_unit(text: str) -> pint.Quantity | None:
    """The quantity one ``text`` unit stands for (scale included), or None if unparseable."""
    import pint

    expr = normalise_unit(text)
    if not expr:
        return None
    try:
        q = registry().parse_expression(expr)
    except (pint.errors.PintError, ValueError, TypeError, AttributeError, SyntaxError):
        return None
    if not isinstance(q, registry().Quantity):
        return None
    return q


def require_unit(text: str, *, what: str) -> pint.Quantity:
    """Parse a contract's canonical unit; a bad one is a configuration error."""
    q = parse_unit(text)
    if q is None:
        raise ConfigError(f"{what}: unit {text!r} is not a unit pint understands "
                          "(UCUM forms like mm[Hg], mmol/L, umol/L, 10*3/uL are accepted)")
    return q


def analyte_mass(analyte: str | None) -> float | None:
    if analyte is None:
        return None
    key = analyte.strip().lower().replace(" ", "_")
    if key not in MOLAR_MASS:
        raise ConfigError(f"unknown analyte {analyte!r}; known: {sorted(MOLAR_MASS)}")
    return MOLAR_MASS[key]


def _converter(src: str, dst: str, analyte: str | None) -> tuple[str | None, Any]:
    """(reason, function values -> values) for one source unit."""
    import pint

    if not src.strip():
        return REASON_MISSING_UNIT, None
    sq, dq = parse_unit(src), parse_unit(dst)
    if dq is None:
        raise ConfigError(f"target unit {dst!r} is not understood")
    if sq is None:
        return REASON_UNKNOWN_UNIT, None
    ureg = registry()
    mass = analyte_mass(analyte)
    candidates = [sq]
    if mass is not None:
        m = ureg.Quantity(mass, "g/mol")
        candidates += [sq / m, sq * m]
    for cand in candidates:
        if cand.dimensionality == dq.dimensionality:
            unit_q = cand

            def fn(v: np.ndarray, unit_q: Any = unit_q) -> np.ndarray:
                try:
                    out = (ureg.Quantity(v, unit_q.units) * unit_q.magnitude).to(dq.units)
                except pint.errors.OffsetUnitCalculusError:  # degC etc.: no scaling on offsets
                    out = ureg.Quantity(v, unit_q.units).to(dq.units)
                return np.asarray(out.magnitude, dtype=np.float64) / float(dq.magnitude)

            return None, fn
    return REASON_INCOMPATIBLE_UNIT, None


def conversion_factor(src: str, dst: str, analyte: str | None = None) -> float:
    """Multiplicative factor from ``src`` to ``dst`` (ConfigError when impossible)."""
    reason, fn = _converter(src, dst, analyte)
    if fn is None:
        raise ConfigError(f"cannot convert {src!r} to {dst!r}"
                          f"{f' for {analyte}' if analyte else ''}: {reason}")
    return float(fn(np.array([1.0]))[0])


@dataclass
class Converted:
    """Values in the target unit (NaN where not convertible) and what happened, per unit."""

    values: np.ndarray
    rows_by_unit: Counter[str] = field(default_factory=Counter)
    failed_by_unit: dict[str, Counter[str]] = field(default_factory=dict)  # reason -> unit -> n

    @property
    def rejects(self) -> Counter[str]:
        return Counter({r: sum(c.values()) for r, c in self.failed_by_unit.items()})


def convert_column(values: pd.Series | np.ndarray, units: pd.Series | np.ndarray, target: str,
                   analyte: str | None = None) -> Converted:
    """Convert ``values`` (written in ``units``, row by row) to ``target``.

    One pint conversion per distinct unit string; rows whose unit is missing, unparseable or
    incompatible come back NaN and are counted under their reason and unit string (unit
    strings are metadata, never patient values, so they may appear in reports).
    """
    import pandas as pd

    vals = np.asarray(values, dtype=np.float64)
    u = pd.Series(np.asarray(units, dtype=object)).fillna("").astype(str)
    out = np.full(vals.shape, np.nan)
    res = Converted(out)
    codes, uniques = pd.factorize(u, sort=True)
    for i, unit in enumerate(uniques):
        idx = np.flatnonzero(codes == i)
        res.rows_by_unit[unit] += len(idx)
        reason, fn = _converter(unit, target, analyte)
        if fn is None:
            assert reason is not None
            res.failed_by_unit.setdefault(reason, Counter())[unit] += len(idx)
            continue
        out[idx] = fn(vals[idx])
    return res
