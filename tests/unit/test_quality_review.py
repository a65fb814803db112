"""Disclosure control of the quality report after review: secondary suppression that survives
a reader who knows the algorithm and the total, structural zeros, messages, unit strings."""

from __future__ import annotations

import datetime as dt
import math
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedcare.analytics.shift import compare_reports
from fedcare.data.adapters.canonical import CanonicalRecords
from fedcare.data.contract import load_contract, parse_contract
from fedcare.data.features import build_features
from fedcare.data.quality import (
    SECONDARY,
    exposes_total,
    passes_minimum_quality,
    quality_report,
    suppress_partition,
)
from tests.unit.test_quality import site

CARDIO = Path(__file__).resolve().parents[2] / "examples" / "contracts" / "cardio.toml"


def _feasible(cells: list, total: int, min_cell: int, i: int) -> tuple[float, float]:
    """What a reader who knows the rule and the total can say about hidden cell ``i``."""
    lo_box = {j: (0, min_cell - 1) if c != SECONDARY else (min_cell, math.inf)
              for j, c in enumerate(cells) if isinstance(c, str)}
    rest = total - sum(c for c in cells if not isinstance(c, str))
    others = [b for j, b in lo_box.items() if j != i]
    lo = max(lo_box[i][0], rest - sum(b[1] for b in others))
    hi = min(lo_box[i][1], rest - sum(b[0] for b in others))
    return lo, hi


@given(st.lists(st.integers(0, 40), min_size=1, max_size=10), st.integers(2, 12))
def test_no_small_hidden_cell_is_determined_by_the_total(counts: list[int],
                                                         min_cell: int) -> None:
    cells = suppress_partition(counts, min_cell)
    for c, n in zip(cells, counts, strict=True):
        assert c == n or isinstance(c, str)
        assert n >= min_cell or isinstance(c, str)
    if exposes_total(counts, min_cell):
        return  # the caller suppresses the total: nothing to subtract from
    total = sum(counts)
    for i, n in enumerate(counts):
        if isinstance(cells[i], str) and 1 <= n < min_cell:
            lo, hi = _feasible(cells, total, min_cell, i)
            assert lo <= n <= hi and lo < hi, (cells, total, i)


def test_zero_cells_do_not_protect_a_small_one() -> None:
    assert suppress_partition([12, 15, 3, 0], 10) == [SECONDARY, 15, "<10", "<10"]
    assert suppress_partition([12, 15, 3, 4], 10) == [12, 15, "<10", "<10"]  # 3 + 4: not unique
    assert suppress_partition([50, 0, 0], 10) == [50, "<10", "<10"]  # nothing small to protect


def test_cells_all_at_min_cell_minus_one_expose_the_total() -> None:
    assert suppress_partition([9, 9, 30], 10) == ["<10", "<10", SECONDARY]
    assert exposes_total([9, 9], 10) and not exposes_total([9, 8], 10)


def _single_bin_site(n: int, small: int) -> CanonicalRecords:
    """``n`` persons, every lab identical except ``small`` persons with a low sbp."""
    rec = site(n)
    ev = rec.events.copy()
    sbp = ev.index[ev["code"] == "8480-6"]
    ev.loc[sbp, "value"] = 135.0
    ev.loc[sbp[:small], "value"] = 70.0
    return CanonicalRecords(rec.persons, ev, rec.rejects, rec.source_counts)


def test_drop_row_histogram_small_bin_cannot_be_recovered() -> None:
    c = load_contract(CARDIO)
    rep = quality_report(c, _single_bin_site(60, 3))
    counts = rep["features"]["sbp"]["histogram"]["counts"]
    assert counts[0] == "<10" and counts[3] == SECONDARY  # 60-80 hidden, 120-140 too
    shown = sum(x for x in counts if isinstance(x, int))
    assert rep["cohort_rows"] - shown != 3


def test_fixed_date_no_index_step_is_not_a_cell() -> None:
    raw = tomllib.loads(CARDIO.read_text())
    raw["index"] = {"rule": "fixed_date", "date": dt.date(2020, 6, 15)}
    c = parse_contract(raw)
    rec = site(60)
    persons = rec.persons.copy()
    persons.loc[:2, "birth_date"] = pd.NaT  # 3 persons without a birth date
    rep = quality_report(c, CanonicalRecords(persons, rec.events, rec.rejects,
                                             rec.source_counts))
    steps = {a["step"]: a["count"] for a in rep["attrition"]}
    assert steps["no index date"] == "<10" and steps["birth date unknown"] == "<10"
    # the 3 must not be persons - cohort rows (every other step is 0)
    assert rep["persons"] == 60 and rep["cohort_rows"] == SECONDARY


def test_unprotectable_label_partition_hides_the_cohort_size() -> None:
    c = load_contract(CARDIO)
    rep = quality_report(c, site(18, label_every=2))  # 9 positives, 9 negatives
    assert rep["label"]["positive"] == "<10" and rep["label"]["negative"] == "<10"
    assert rep["cohort_rows"] == SECONDARY
    v = " | ".join(rep["violations"])
    assert "18" not in v


def test_missing_share_is_printed_only_with_large_counts() -> None:
    raw = tomllib.loads(CARDIO.read_text())
    raw["features"][3]["missing"] = "impute_mean"  # total_chol
    raw["quality"]["max_missing_by_feature"] = {"total_chol": 0.1}
    raw["quality"]["min_rows"] = 1
    raw["quality"]["min_label_count"] = 0
    c = parse_contract(raw)
    rec = site(40)
    drop = rec.events.index[(rec.events["code"] == "2093-3")][:5]
    small = CanonicalRecords(rec.persons, rec.events.drop(drop), rec.rejects,
                             rec.source_counts)
    v = passes_minimum_quality(c, build_features(c, small))
    assert v == ["feature 'total_chol': the share of cohort rows without a value exceeds the "
                 "maximum 10%; check its codes, units and window"]
    assert not any("12%" in x or "13%" in x for x in v)
    drop = rec.events.index[(rec.events["code"] == "2093-3")][:20]
    big = CanonicalRecords(rec.persons, rec.events.drop(drop), rec.rejects, rec.source_counts)
    assert "50% of cohort rows have no value" in passes_minimum_quality(
        c, build_features(c, big))[0]


def test_label_message_never_prints_a_secondary_suppressed_count() -> None:
    c = load_contract(CARDIO)  # min_label_count 10, min_rows 50
    rep = quality_report(c, site(35, label_every=1))  # all 35 positive, 0 negative
    assert rep["label"] == {"name": "cvd_event", "negative": "<10", "positive": 35}
    rep = quality_report(c, _labelled(35, negatives=5))
    assert rep["label"]["negative"] == "<10" and rep["label"]["positive"] == SECONDARY
    assert not any("30" in v for v in rep["violations"])


def _labelled(n: int, negatives: int) -> CanonicalRecords:
    rec = site(n, label_every=1)
    ev = rec.events
    mi = ev.index[ev["code"] == "I21.4"][:negatives]
    return CanonicalRecords(rec.persons, ev.drop(mi), rec.rejects, rec.source_counts)


def test_free_text_units_are_folded_unless_common() -> None:
    c = load_contract(CARDIO)
    rec = site(40)
    ev = rec.events.copy()
    chol = ev.index[ev["code"] == "2093-3"]
    ev.loc[chol[:3], "unit"] = "mmol/L per Dr Jones"   # 3 persons: never published
    ev.loc[chol[3:6], "unit"] = "mmol/l"               # parses: canonical spelling
    ev.loc[chol[6:18], "unit"] = "mmol/L*"             # 12 persons: shown as written
    rep = quality_report(c, CanonicalRecords(rec.persons, ev, rec.rejects, rec.source_counts))
    block = rep["features"]["total_chol"]
    text = str(block)
    assert "Jones" not in text
    assert block["units"] == {"mmol / l": 25, "mmol/L*": 12, "other": "<10"}
    assert block["unit_failures"] == {"unit not recognised": {"mmol/L*": 12, "other": "<10"}}


def test_shift_never_repeats_a_free_text_unit_with_a_suppressed_count() -> None:
    c = load_contract(CARDIO)
    a = quality_report(c, site(60, seed=1), site="a")
    b = quality_report(c, site(60, seed=2), site="b")
    b["features"]["total_chol"]["unit_failures"] = {  # e.g. a report from an older site
        "unit not recognised": {"Dr Jones": "<10", "furlongs!": 12, "mg%": "<10"}}
    msgs = " ".join(f.message for f in compare_reports({"a": a, "b": b}).of_kind("units"))
    assert "Jones" not in msgs and "mg%" not in msgs
    assert "'furlongs!'" in msgs and "'other'" in msgs


@pytest.mark.parametrize("min_cell", [0, -1])
def test_passes_minimum_quality_refuses_min_cell_below_one(min_cell: int) -> None:
    c = load_contract(CARDIO)
    with pytest.raises(ValueError, match="min_cell"):
        passes_minimum_quality(c, build_features(c, site(20)), min_cell=min_cell)


def test_counts_in_reports_stay_consistent_with_features() -> None:
    c = load_contract(CARDIO)
    rep = quality_report(c, site(200))
    hist = rep["features"]["sbp"]["histogram"]["counts"]
    assert sum(x for x in hist if isinstance(x, int)) <= rep["cohort_rows"]
    assert np.isfinite(rep["cohort_rows"])
