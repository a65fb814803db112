"""Hub-side comparison of site quality reports."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedcare.analytics.shift import compare_reports, js_divergence, psi
from fedcare.core.errors import DataError
from fedcare.data.contract import load_contract
from fedcare.data.quality import quality_report
from tests.unit.test_quality import site

CARDIO = Path(__file__).resolve().parents[2] / "examples" / "contracts" / "cardio.toml"


@given(st.lists(st.integers(0, 1000), min_size=2, max_size=20).filter(lambda v: sum(v) > 0))
def test_identical_distributions_have_zero_divergence(v: list[int]) -> None:
    assert psi(v, v) == pytest.approx(0, abs=1e-12)
    assert js_divergence(v, [3 * x for x in v]) == pytest.approx(0, abs=1e-12)


@given(st.lists(st.integers(0, 1000), min_size=2, max_size=20).filter(lambda v: sum(v) > 0),
       st.lists(st.integers(0, 1000), min_size=2, max_size=20).filter(lambda v: sum(v) > 0))
def test_divergences_are_symmetric_bounded(a: list[int], b: list[int]) -> None:
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    if sum(a) == 0 or sum(b) == 0:
        return
    assert 0 <= js_divergence(a, b) <= 1 + 1e-12
    assert js_divergence(a, b) == pytest.approx(js_divergence(b, a))
    assert psi(a, b) >= -1e-12 and psi(a, b) == pytest.approx(psi(b, a))


def test_disjoint_supports() -> None:
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    assert math.isfinite(psi([1, 0], [0, 1]))


def test_bad_distributions() -> None:
    for bad in ([], [0, 0], [-1, 2], [np.nan, 1]):
        with pytest.raises(ValueError):
            psi(bad, [1] * max(len(bad), 1))


@pytest.fixture(scope="module")
def reports():
    c = load_contract(CARDIO)
    return {
        "h1": quality_report(c, site(300, seed=1), site="h1"),
        "h2": quality_report(c, site(300, seed=2), site="h2"),
        # chol in mg/dL written as mmol/L: values ~5 read as 5 mg/dL -> far too low; and
        # smoking coded in SNOMED; outcome nearly absent (label definition mismatch)
        "h3": quality_report(c, site(300, seed=3, snomed_smoking=True, label_every=30),
                             site="h3"),
    }


def test_similar_sites_raise_no_shift(reports) -> None:
    sr = compare_reports({k: reports[k] for k in ("h1", "h2")})
    assert not sr.of_kind("distribution_shift") or all(
        "no verdict" in f.message for f in sr.of_kind("distribution_shift"))
    assert not sr.of_kind("label_rate")
    assert sr.divergence["sbp"]["h1"]["psi"] < 0.25


def test_label_rate_outlier_and_shift(reports) -> None:
    sr = compare_reports(reports)
    lab = sr.of_kind("label_rate")
    assert [f.site for f in lab] == ["h3"] and "label-definition mismatch" in lab[0].message
    smoker = sr.of_kind("coverage")
    assert any(f.site == "h3" and f.subject == "smoker" for f in smoker) is False  # SNOMED ok
    json.dumps(sr.to_dict())


def test_shift_detected_on_a_shifted_feature(reports) -> None:
    shifted = json.loads(json.dumps(reports["h2"]))
    h = shifted["features"]["sbp"]["histogram"]["counts"]
    # shift the distribution one bin up (a mirror leaves too few bins unsuppressed at both
    # sites once the tails are secondary-suppressed)
    h[:] = ["<10", *h[:-1]]
    sr = compare_reports({"h1": reports["h1"], "h2": shifted})
    subjects = {f.subject for f in sr.of_kind("distribution_shift") if "PSI" in f.message}
    assert "sbp" in subjects


def test_suppressed_bins_are_not_used(reports) -> None:
    a = json.loads(json.dumps(reports["h1"]))
    b = json.loads(json.dumps(reports["h2"]))
    a["features"]["hdl"]["histogram"]["counts"] = ["<10"] * 10
    sr = compare_reports({"h1": a, "h2": b})
    assert "hdl" not in {k for k, v in sr.divergence.items() if v}
    assert any(f.subject == "hdl" and "no verdict" in f.message for f in sr.findings)


def test_coverage_and_units(reports) -> None:
    sr = compare_reports(reports)
    cov = sr.of_kind("coverage")
    assert any(f.site is None and f.subject == "OMOP" for f in cov)  # no site maps OMOP
    bad = json.loads(json.dumps(reports["h1"]))
    bad["features"]["total_chol"]["unit_failures"] = {"unit not recognised": {"mg/dl ": 40}}
    units = compare_reports({"h1": bad, "h2": reports["h2"]}).of_kind("units")
    assert units and units[0].site == "h1" and "mg/dl " in units[0].message


def test_needs_two_reports_and_same_contract(reports) -> None:
    with pytest.raises(DataError, match="at least two"):
        compare_reports({"h1": reports["h1"]})
    other = json.loads(json.dumps(reports["h2"]))
    other["contract"]["hash"] = "0" * 64
    assert compare_reports({"h1": reports["h1"], "h2": other}).of_kind("contract_hash")
