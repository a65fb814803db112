"""Unit conversion (pint, molar masses) and code-set matching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedcare.core.errors import ConfigError
from fedcare.data.contract import CodeSet
from fedcare.data.harmonize.codes import (
    SiteMapping,
    canonical_system,
    match_codes,
    normalise_codes,
)
from fedcare.data.harmonize.units import (
    REASON_INCOMPATIBLE_UNIT,
    REASON_MISSING_UNIT,
    REASON_UNKNOWN_UNIT,
    conversion_factor,
    convert_column,
)


@pytest.mark.parametrize("src, dst, analyte, factor", [
    ("mg/dL", "mmol/L", "cholesterol", 10 / 386.65),
    ("mg/dL", "mmol/L", "glucose", 10 / 180.16),
    ("mg/dL", "umol/L", "creatinine", 10_000 / 113.12),
    ("µmol/L", "umol/L", "creatinine", 1.0),
    ("mmol/l", "mmol/L", None, 1.0),
    ("mmHg", "mm[Hg]", None, 1.0),
    ("kPa", "mm[Hg]", None, 7.500615758),
    ("10*3/uL", "10*9/L", None, 1.0),
    ("g/dL", "g/L", None, 10.0),
    ("%", "1", None, 0.01),
])
def test_known_factors(src, dst, analyte, factor) -> None:
    assert conversion_factor(src, dst, analyte) == pytest.approx(factor, rel=1e-9)


def test_mass_to_molar_needs_the_analyte() -> None:
    with pytest.raises(ConfigError, match="unit incompatible"):
        conversion_factor("mg/dL", "mmol/L")
    with pytest.raises(ConfigError, match="unknown analyte"):
        conversion_factor("mg/dL", "mmol/L", "unobtainium")


@given(st.floats(0.01, 1e4), st.sampled_from(["cholesterol", "glucose", "creatinine",
                                              "triglycerides", "urea"]))
def test_round_trip_mass_molar(x: float, analyte: str) -> None:
    there = convert_column(np.array([x]), np.array(["mg/dL"]), "mmol/L", analyte).values
    back = convert_column(there, np.array(["mmol/L"]), "mg/dL", analyte).values
    assert back[0] == pytest.approx(x, rel=1e-12)


def test_convert_column_groups_and_counts_by_unit() -> None:
    vals = np.array([180.0, 5.0, 120.0, 3.0, 7.0, 90.0])
    units = np.array(["mg/dL", "mmol/L", "bogus!", "", "mm[Hg]", "mg/dL"], dtype=object)
    res = convert_column(vals, units, "mmol/L", "glucose")
    np.testing.assert_allclose(res.values[[0, 1, 5]], [180 / 18.016, 5.0, 90 / 18.016])
    assert np.isnan(res.values[[2, 3, 4]]).all()
    assert res.rows_by_unit["mg/dL"] == 2
    assert res.failed_by_unit == {REASON_UNKNOWN_UNIT: {"bogus!": 1},
                                  REASON_MISSING_UNIT: {"": 1},
                                  REASON_INCOMPATIBLE_UNIT: {"mm[Hg]": 1}}
    assert sum(res.rejects.values()) == 3


def test_empty_column() -> None:
    res = convert_column(np.array([]), np.array([], dtype=object), "mmol/L", "glucose")
    assert res.values.shape == (0,) and not res.rejects


# -- codes --------------------------------------------------------------------------------------


def test_normalisation_per_system() -> None:
    systems = pd.Series(["ICD10CM", "ICD10CM", "OMOP", "SNOMED", "LOINC", "LOCAL"])
    codes = pd.Series([" i21.4", "I214", "3027114.0", "22298006", "2093-3", None])
    assert list(normalise_codes(systems, codes)) == ["I214", "I214", "3027114", "22298006",
                                                     "2093-3", ""]


def test_prefix_and_exact_matching_per_system() -> None:
    cs = CodeSet(ICD10CM=["I21*", "I63.9"], SNOMED=["22298006"])
    systems = pd.Series(["ICD10CM", "ICD10CM", "ICD10CM", "SNOMED", "SNOMED", "LOINC"])
    codes = normalise_codes(systems, pd.Series(["I21.4", "I63.9", "I63.0", "22298006",
                                                "I214", "22298006"]))
    assert list(match_codes(systems, codes, cs)) == [True, True, False, True, False, False]


def test_unknown_codes_match_nothing() -> None:
    cs = CodeSet(ICD10CM=["E11*"])
    systems = pd.Series(["ICD10CM", "LOCAL"])
    assert not match_codes(systems, normalise_codes(systems, pd.Series(["Z99", "E11"])), cs).any()


def test_system_aliases() -> None:
    assert canonical_system("http://snomed.info/sct") == "SNOMED"
    assert canonical_system("ICD-10-CM") == "ICD10CM"
    with pytest.raises(ConfigError, match="unknown code system"):
        canonical_system("ICD9CM")


def test_site_mapping_csv_and_toml(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("source_system,source_code,target_system,target_code\n"
                                    "LOCAL,chol1,loinc,2093-3\nLOCAL,smk,SNOMED,77176002\n")
    (tmp_path / "m.toml").write_text('[[map]]\nsource_system = "LOCAL"\nsource_code = "chol1"\n'
                                     'target_system = "LOINC"\ntarget_code = "2093-3"\n')
    m = SiteMapping.load(tmp_path / "m.csv")
    assert SiteMapping.load(tmp_path / "m.toml").pairs == m.pairs[:1]
    ev = pd.DataFrame({"system": ["LOCAL", "LOCAL", "LOCAL"], "code": ["CHOL1", "X", "SMK"]})
    out, counts = m.apply(ev)
    assert list(out["system"]) == ["LOINC", "LOCAL", "SNOMED"]
    assert list(out["code"]) == ["2093-3", "X", "77176002"]
    assert counts == {"LOCAL": 2}


def test_bad_site_mapping(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("source_system,source_code,target_system,target_code\n"
                                    "LOCAL,,LOINC,1\nLOCAL,a,ICD9,1\n")
    with pytest.raises(ConfigError) as err:
        SiteMapping.load(tmp_path / "m.csv")
    assert "row 1" in str(err.value) and "ICD9" in str(err.value)
    with pytest.raises(ConfigError, match="does not exist"):
        SiteMapping.load(tmp_path / "none.csv")


# -- review fixes: dimensionless scales, HbA1c, UCUM atoms and exponents ------------------------


def test_percent_to_mmol_per_mol_is_refused_without_a_rule() -> None:
    res = convert_column(np.array([6.5]), np.array(["%"]), "mmol/mol")
    assert np.isnan(res.values[0])
    assert res.failed_by_unit == {"unit incompatible with target": {"%": 1}}
    with pytest.raises(ConfigError, match="unit incompatible"):
        conversion_factor("%", "mmol/mol")


@pytest.mark.parametrize("analyte", ["HbA1c", "hba1c"])
def test_hba1c_uses_the_ifcc_ngsp_master_equation(analyte: str) -> None:
    there = convert_column(np.array([6.5, 5.0]), np.array(["%", "%"]), "mmol/mol", analyte)
    assert there.values == pytest.approx([47.54, 31.15], abs=0.01)  # not 65 and 50
    back = convert_column(there.values, np.array(["mmol/mol"] * 2), "%", analyte)
    assert back.values == pytest.approx([6.5, 5.0], rel=1e-12)
    with pytest.raises(ConfigError, match="not a plain factor"):
        conversion_factor("%", "mmol/mol", analyte)


@given(st.floats(3.0, 20.0))
def test_hba1c_round_trip(x: float) -> None:
    there = convert_column(np.array([x]), np.array(["%"]), "mmol/mol", "hba1c").values
    assert there[0] == pytest.approx(10.929 * (x - 2.15))
    back = convert_column(there, np.array(["mmol/mol"]), "%", "hba1c").values
    assert back[0] == pytest.approx(x, rel=1e-12)


@pytest.mark.parametrize("src, dst, factor", [
    ("kg/m2", "kg/m**2", 1.0),
    ("[lb_av]", "kg", 0.45359237),
    ("[in_i]", "cm", 2.54),
    ("kg.m-2", "kg/m2", 1.0),
    ("s-1", "/min", 60.0),
    ("mL/min/1.73m2", "mL/s/m2", 1 / 60 / 1.73),
])
def test_ucum_atoms_and_exponents(src: str, dst: str, factor: float) -> None:
    assert conversion_factor(src, dst) == pytest.approx(factor, rel=1e-9)


def test_celsius_and_fahrenheit() -> None:
    res = convert_column(np.array([212.0, 37.0]), np.array(["[degF]", "Cel"]), "Cel")
    assert res.values == pytest.approx([100.0, 37.0])


def test_junk_units_are_unknown_not_a_crash() -> None:
    res = convert_column(np.array([1.0, 2.0]), np.array(["mL/min/{1.73_m2}", "/*/"]), "mL/min")
    assert np.isnan(res.values).all()
    assert sum(res.failed_by_unit["unit not recognised"].values()) == 2
