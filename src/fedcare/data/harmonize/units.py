"""Unit harmonization: UCUM-ish unit strings -> the contract's canonical unit, via pint.

Sites write the same quantity in different units (cholesterol in mg/dL in the US, mmol/L in
Europe) and different spellings (``mm[Hg]``, ``mmHg``; ``umol/L``, ``µmol/L``). We parse the
UCUM forms clinical systems emit (Schadow & McDonald, *The Unified Code for Units of Measure*,
Regenstrief) into pint expressions, and convert mass <-> amount concentrations with the
analyte's molar mass (mass conc. = molar conc. x M). Conversion runs once per *distinct unit*
of a column, on the whole group of values as a numpy array, never row by row.

A unit that cannot be parsed, or is not convertible to the target (even with the analyte's
molar mass), is never guessed: those rows become missing and are counted by reason and unit.

**Dimensionless units are not interchangeable.** pint sees ``%`` and ``mmol/mol`` as two
spellings of a pure number and would convert HbA1c 6.5 % to 65 mmol/mol; the two are different
*scales* (NGSP/DCCT vs IFCC), related by the master equation IFCC = 10.929 x (NGSP - 2.15)
(Hoelzel et al., *IFCC reference system for measurement of hemoglobin A1c*, Clin Chem 2004;
Hanas & John, *2010 consensus statement on the worldwide standardization of the HbA1c
measurement*, Diabetes Care 2010), i.e. 6.5 % = 47.5 mmol/mol. A conversion between two
different dimensionless units therefore needs an explicit rule (:data:`RULES`); the only
generic one is a percentage <-> a fraction (``%`` <-> ``1``), a plain factor by definition.
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

#: Explicit conversions pint cannot know: (analyte or None for any, source unit, target unit)
#: -> (a, b) with target = a x source + b. Units are matched by meaning (``%`` = ``percent``).
RULES: dict[tuple[str | None, str, str], tuple[float, float]] = {
    ("hba1c", "%", "mmol/mol"): (10.929, -10.929 * 2.15),
    ("hba1c", "mmol/mol", "%"): (1 / 10.929, 2.15),
    (None, "%", "1"): (0.01, 0.0),
    (None, "1", "%"): (100.0, 0.0),
}

_POWER = re.compile(r"10[*^](-?\d+)")
_ANNOTATION = re.compile(r"\{[^}]*\}")
#: UCUM writes exponents as a trailing integer (``m2``, ``s-1``); pint needs ``**``. Not after
#: a digit-``e`` (``1e3``), not inside a longer token.
_EXPONENT = re.compile(r"(?<=[A-Za-z\]])(?<![0-9][eE])(-?\d+)(?![\d.A-Za-z])")
#: UCUM's ``.`` multiplies (``kg.m-2``); a decimal point sits between digits.
_UCUM_DOT = re.compile(r"(?<=[A-Za-z\]])\.(?=[A-Za-z\[])")
#: ``/1.73m2`` (eGFR) means per 1.73 square metres, not (per 1.73) times square metres.
_PER_SCALED = re.compile(r"/(\d+(?:\.\d+)?)\s*([A-Za-z][A-Za-z0-9*]*)")
#: UCUM bracketed and special atoms -> pint names.
_UCUM_ATOMS = {"[Hg]": "Hg", "[iU]": "IU", "[IU]": "IU", "[lb_av]": "lb", "[oz_av]": "oz",
               "[in_i]": "inch", "[ft_i]": "foot", "[degF]": "degF"}
_CELSIUS = re.compile(r"(?<![A-Za-z])Cel(?![A-Za-z])")


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
    ``1e3/uL``, ``µmol/L`` -> ``umol/L``, ``[iU]/L`` -> ``IU/L``, ``%`` -> ``percent``,
    ``kg/m2`` -> ``kg/m**2``, ``[lb_av]`` -> ``lb``, ``[in_i]`` -> ``inch``, ``Cel`` ->
    ``degC``, ``kg.m-2`` -> ``kg*m**-2``, ``mL/min/1.73m2`` -> ``mL/min/(1.73*m**2)``,
    ``/min`` -> ``1/min``)."""
    t = _ANNOTATION.sub("", text.strip())
    t = t.replace("µ", "u").replace("μ", "u")
    for atom, name in _UCUM_ATOMS.items():
        t = t.replace(atom, name)
    t = _CELSIUS.sub("degC", t)
    t = _UCUM_DOT.sub("*", t)
    t = _EXPONENT.sub(r"**\1", t)  # before 10*3 -> 1e3, whose "e3" is not an exponent
    t = _PER_SCALED.sub(r"/(\1*\2)", t)
    t = _POWER.sub(lambda m: f"1e{m.group(1)}", t)
    t = t.replace("%", "percent")
    if t.startswith("/"):
        t = "1" + t  # UCUM "/min": per minute
    if t in ("", "1"):
        return "dimensionless" if t == "1" else ""
    return t


@lru_cache(maxsize=4096)
def parse_unit(text: str) -> pint.Quantity | None:
    """The quantity one ``text`` unit stands for (scale included), or None if unparseable."""
    expr = normalise_unit(text)
    if not expr:
        return None
    try:
        q = registry().parse_expression(expr)
    except Exception:  # noqa: BLE001 (pint raises anything, even AssertionError, on junk)
        return None
    if not isinstance(q, registry().Quantity):
        return None
    return q


@lru_cache(maxsize=4096)
def unit_label(text: str) -> str | None:
    """pint's canonical spelling of a parseable unit (``mg/dL``, ``mg/dl`` and ``mg / dL`` all
    give ``mg / dl``; a scale is kept: ``10*3/uL`` -> ``1000 / µl``), or None when ``text`` is
    not a unit. Reports publish this form rather than the site's text, which can be free text
    (a name, a lab's note) and fingerprints a site's spelling."""
    import math

    q = parse_unit(text)
    if q is None:
        return None
    for style in ("~", ""):
        units = format(q.units, style) or "1"
        mag = float(q.magnitude)
        label = units if math.isclose(mag, 1.0) else f"{mag:.6g} {units}"
        label = label.replace(" 1 / ", " / ")
        if parse_unit(label) is not None:
            return label
    return None


def require_unit(text: str, *, what: str) -> pint.Quantity:
    """Parse a contract's canonical unit; a bad one is a configuration error."""
    q = parse_unit(text)
    if q is None:
        raise ConfigError(f"{what}: unit {text!r} is not a unit pint understands "
                          "(UCUM forms like mm[Hg], mmol/L, umol/L, 10*3/uL are accepted)")
    return q


def _analyte_key(analyte: str | None) -> str | None:
    if analyte is None:
        return None
    key = analyte.strip().lower().replace(" ", "_")
    known = set(MOLAR_MASS) | {a for a, _, _ in RULES if a is not None}
    if key not in known:
        raise ConfigError(f"unknown analyte {analyte!r}; known: {sorted(known)}")
    return key


def analyte_mass(analyte: str | None) -> float | None:
    """Molar mass (g/mol) of ``analyte``; None for no analyte or one known only by a rule."""
    key = _analyte_key(analyte)
    return None if key is None else MOLAR_MASS.get(key)


def _same_unit(a: pint.Quantity, b: pint.Quantity) -> bool:
    """Same meaning (``%`` and ``percent``; ``mmol/mol`` and ``umol/mmol``)."""
    if a.dimensionality != b.dimensionality:
        return False
    try:
        ratio = float((a / b).to("dimensionless").magnitude)
    except Exception:  # noqa: BLE001 (offset units: compare their names instead)
        return bool(a.units == b.units and a.magnitude == b.magnitude)
    return abs(ratio - 1.0) < 1e-12


def _rule(sq: pint.Quantity, dq: pint.Quantity, analyte: str | None) -> Any:
    key = _analyte_key(analyte)
    for (who, src, dst), (a, b) in RULES.items():
        if who not in (None, key):
            continue
        rs, rd = parse_unit(src), parse_unit(dst)
        assert rs is not None and rd is not None
        if _same_unit(sq, rs) and _same_unit(dq, rd):
            def fn(v: np.ndarray, a: float = a, b: float = b) -> np.ndarray:
                return np.asarray(v, dtype=np.float64) * a + b
            return fn
    return None


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
    rule = _rule(sq, dq, analyte)
    if rule is not None:
        return None, rule
    ureg = registry()
    mass = analyte_mass(analyte)
    candidates = [sq]
    if mass is not None:
        m = ureg.Quantity(mass, "g/mol")
        candidates += [sq / m, sq * m]
    for cand in candidates:
        if cand.dimensionless and dq.dimensionless and not _same_unit(cand, dq):
            continue  # two different pure-number scales: only an explicit rule converts
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
    """Multiplicative factor from ``src`` to ``dst`` (ConfigError when impossible, or when the
    conversion is not a plain factor, like HbA1c % -> mmol/mol)."""
    reason, fn = _converter(src, dst, analyte)
    if fn is None:
        raise ConfigError(f"cannot convert {src!r} to {dst!r}"
                          f"{f' for {analyte}' if analyte else ''}: {reason}")
    one, two = fn(np.array([1.0, 2.0]))
    if not np.isclose(two, 2 * one, rtol=1e-12, atol=0.0):
        raise ConfigError(f"{src!r} -> {dst!r} is not a plain factor (an offset applies); "
                          "use convert_column")
    return float(one)


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
