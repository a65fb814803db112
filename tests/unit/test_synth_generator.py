from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedcare.core.errors import ConfigError
from fedcare.data.adapters.fhir import load_fhir
from fedcare.data.synth import FEATURES, LABEL, TrueRiskModel, generate_hospitals
from fedcare.data.synth.codes import LOINC, from_canonical
from fedcare.data.synth.cohort import N_MISSING, Profile, simulate
from fedcare.data.synth.fhir_export import FHIR_REJECTS, UNITS, expected_source_counts, write_fhir
from fedcare.data.synth.generate import PROFILES

SMALL = (60, 70, 50)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> list:
    return generate_hospitals(tmp_path_factory.mktemp("synth"), patients=SMALL, seed=3)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_same_seed_same_bytes_and_truth(tmp_path: Path) -> None:
    a = generate_hospitals(tmp_path / "a", patients=SMALL, seed=7)
    b = generate_hospitals(tmp_path / "b", patients=SMALL, seed=7)
    c = generate_hospitals(tmp_path / "c", patients=SMALL, seed=8)

    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    assert _tree(tmp_path / "a") != _tree(tmp_path / "c")
    for x, y in zip(a, b, strict=True):
        pd.testing.assert_frame_equal(x.truth, y.truth)
        assert x.expected_rejects == y.expected_rejects
    assert not a[0].truth["sbp"].equals(c[0].truth["sbp"])


def test_each_hospital_has_its_format_files_and_mapping(small: list) -> None:
    assert [(h.name, h.format) for h in small] == [("hospital-1", "fhir"), ("hospital-2", "omop"),
                                                   ("hospital-3", "csv")]
    assert {p.name for p in small[0].paths} >= {"Patient.ndjson", "Observation.ndjson",
                                                 "Condition.ndjson", "Encounter.ndjson",
                                                 "MedicationRequest.ndjson"}
    assert {p.name for p in small[1].paths} == {
        "person.csv", "observation_period.csv", "measurement.csv", "condition_occurrence.csv",
        "drug_exposure.csv", "visit_occurrence.csv"}
    assert small[1].adapter_options["source_vocabulary"]["condition"] == "ICD10CM"
    assert small[2].mapping_path is not None and small[2].mapping_path.is_file()
    assert all(p.is_file() for h in small for p in h.paths)


def test_truth_table_shape_ranges_and_documented_missingness(small: list) -> None:
    for h, n in zip(small, SMALL, strict=True):
        t = h.truth
        assert list(t.columns) == ["person_id", *FEATURES, LABEL]
        assert t["person_id"].is_unique and t["person_id"].is_monotonic_increasing
        assert len(t) == n - sum(h.excluded.values())
        assert int(t[list(FEATURES)].isna().sum().sum()) == N_MISSING
        assert t["age"].between(30, 90).all()
        ranges = {"sbp": (60, 260), "total_chol": (1, 20), "hdl": (0.2, 5), "glucose": (1, 40),
                  "creatinine": (20, 2000)}
        for f, (lo, hi) in ranges.items():
            assert t[f].dropna().between(lo, hi).all(), f
        for f in ("sex_female", "smoker", "diabetes", "statin", LABEL):
            assert set(t[f].unique()) <= {0, 1}
        # values on the documented grid: 4-decimal comparison is exact
        assert (t["total_chol"].dropna() * 100).round(6).mod(1).eq(0).all()


def test_case_mix_differs_by_hospital(tmp_path: Path) -> None:
    hs = generate_hospitals(tmp_path, patients=(400, 400, 400), seed=1)
    ages = [h.truth["age"].mean() for h in hs]
    assert ages[1] > ages[0] > ages[2]  # profiles: 66, 58, 52 years
    assert [p.age_mean for p in PROFILES] == [58, 66, 52]


def test_labels_follow_the_true_model(tmp_path: Path) -> None:
    hs = generate_hospitals(tmp_path, patients=(1500, 1500, 1500), seed=2)
    t = pd.concat([h.truth for h in hs]).dropna()
    p = TrueRiskModel().probability(t)
    y = t[LABEL].to_numpy()
    # calibration: observed rate within 3 standard errors of the expected rate
    assert abs(y.mean() - p.mean()) < 3 * math.sqrt(p.mean() * (1 - p.mean()) / len(y))
    hi, lo = p > np.quantile(p, 0.8), p < np.quantile(p, 0.2)
    assert y[hi].mean() > 3 * y[lo].mean()


def test_bad_arguments_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="one size per hospital"):
        generate_hospitals(tmp_path, n_hospitals=2, patients=(100, 100, 100))
    with pytest.raises(ConfigError, match="at least 40"):
        generate_hospitals(tmp_path, n_hospitals=1, patients=(10,))
    with pytest.raises(ConfigError, match="n_hospitals"):
        generate_hospitals(tmp_path, n_hospitals=0, patients=())


def test_more_than_three_hospitals_cycle_formats(tmp_path: Path) -> None:
    hs = generate_hospitals(tmp_path, n_hospitals=4, patients=(50, 50, 50, 50))
    assert [h.format for h in hs] == ["fhir", "omop", "csv", "fhir"]
    ids = [set(h.truth["person_id"]) for h in hs]
    assert not set.intersection(*ids[:2]) and not (ids[0] & ids[3])


def test_fhir_export_parses_to_exactly_the_generated_events(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    people = simulate(80, PROFILES[0], 1_000_000, rng, TrueRiskModel())
    paths = write_fhir(tmp_path, people)

    rec = load_fhir(paths, validate="all")

    assert sorted(rec.persons["person_id"]) == sorted(p.pid for p in people)
    assert rec.rejects == FHIR_REJECTS
    assert rec.source_counts == expected_source_counts(people)
    meas = rec.events[(rec.events["domain"] == "measurement")
                      & rec.events["code"].isin(set(LOINC.values()))]
    got = Counter(zip(meas["person_id"], meas["code"], meas["value"].round(9), meas["unit"],
                      meas["start"].dt.date, strict=True))
    want = Counter((p.pid, LOINC[f], round(from_canonical(f, v, UNITS[f]), 9), UNITS[f], day)
                   for p in people for f, day, v, _ in p.measurements)
    extra = got - want  # the deliberate out-of-window total cholesterol with an unknown unit
    assert got - extra == want and sum(extra.values()) == 2
    births = dict(zip(rec.persons["person_id"], rec.persons["birth_date"].dt.date, strict=True))
    assert all(births[p.pid] == p.birth for p in people)
    cond = rec.events[rec.events["domain"] == "condition"]
    assert len(cond) == sum(len(p.conditions) for p in people)


def test_simulate_refuses_a_hospital_too_small_for_its_exclusions() -> None:
    with pytest.raises(ValueError, match="at least"):
        simulate(15, Profile(50, 10, 0.5, 0.2, 0.1, 0.2, 0), 0, np.random.default_rng(0),
                 TrueRiskModel())
