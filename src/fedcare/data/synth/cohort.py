"""Simulate one hospital's patients as format-free timelines plus the features they imply.

Each patient gets an index date (first encounter in 2020), an age on an integer grid, sex,
history (smoking, diabetes, statin), five measurements on the grids of
:data:`fedcare.data.synth.model.GRID`, and a label drawn from :class:`TrueRiskModel`. The
timeline is laid out so the demo contract's rules have one right answer and every rule is
exercised, with a margin of at least a day from every window edge:

- the value the contract must pick (last in ``[index - 365 d, index]``) lies 1..300 days before
  index; decoys: an earlier in-window value (so "last" matters), one 380..800 days before (out
  of the window) and one 1..200 days after index (after the index day);
- conditions and drugs that define a feature start 30..3000 days before index; decoys start
  after index (diabetes, statin) and must not count;
- the label's MI/stroke falls 10..1800 days after index (inside ``(index, index + 1826 d]``);
  decoys fall before index or 1900..2500 days after;
- birth dates are 1..300 days before the ``age``-th birthday at index, so *completed years at
  index* equals ``age`` (the contract's definition) with no leap-day ambiguity;
- a few persons have no 2020 encounter or an age outside 30..90 (excluded, counted), and
  :data:`N_MISSING` cohort members lack one measurement in the window (truth ``NaN``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Final

import numpy as np

from fedcare.data.synth.model import FEATURES, LABEL, MEASUREMENTS, TrueRiskModel

if TYPE_CHECKING:
    import pandas as pd

N_MISSING: Final = 3
EXCLUDED_NO_INDEX: Final = "no index encounter"
EXCLUDED_AGE: Final = "age outside cohort"
STATINS: Final = ("atorvastatin", "simvastatin", "rosuvastatin")
MISSING_FEATURES: Final = ("creatinine", "hdl", "glucose")
_DECOY_BASE: Final = {"sbp": 130.0, "total_chol": 5.0, "hdl": 1.3, "glucose": 5.5,
                      "creatinine": 80.0}


@dataclass(frozen=True)
class Profile:
    """A hospital's case mix: who comes through its doors."""

    age_mean: float
    age_sd: float
    female: float
    smoker: float
    diabetes: float
    statin: float
    sbp_shift: float


@dataclass
class Patient:
    pid: str
    birth: date
    sex: str
    index: date | None
    encounters: list[date] = field(default_factory=list)
    # (feature, day, canonical value, seconds after midnight)
    measurements: list[tuple[str, date, float, int]] = field(default_factory=list)
    # (kind, onset): kind in smoker, diabetes, mi, stroke, hypertension
    conditions: list[tuple[str, date]] = field(default_factory=list)
    drugs: list[tuple[str, date]] = field(default_factory=list)
    features: dict[str, float] | None = None  # truth row (cohort members only)
    label: int = 0
    excluded: str | None = None


def simulate(n: int, profile: Profile, id_base: int, rng: np.random.Generator,
             model: TrueRiskModel) -> list[Patient]:
    """``n`` patients with ids ``id_base + 1 ..``; a few are excluded by design (see module)."""
    n_age_out = max(4, round(0.03 * n))
    n_no_index = max(3, round(0.02 * n))
    if n < n_age_out + n_no_index + N_MISSING + 10:
        raise ValueError(f"a hospital needs at least {n_age_out + n_no_index + N_MISSING + 10} "
                         f"patients, got {n}")
    kinds = ["age_out"] * n_age_out + ["no_index"] * n_no_index
    kinds += ["cohort"] * (n - len(kinds))
    kinds = [kinds[i] for i in rng.permutation(n)]
    patients = [_patient(str(id_base + i + 1), kind, profile, rng) for i, kind in
                enumerate(kinds)]
    _draw_labels(patients, model, rng)
    cohort = [p for p in patients if p.excluded is None]
    for j, p in enumerate(cohort[:N_MISSING]):
        assert p.features is not None
        p.features[MISSING_FEATURES[j % len(MISSING_FEATURES)]] = float("nan")
    for p in patients:
        _timeline(p, rng)
    return patients


def truth_frame(patients: list[Patient]) -> pd.DataFrame:
    """Cohort members' features in contract order, canonical units, plus the label."""
    import pandas as pd

    rows = [{"person_id": p.pid, **(p.features or {}), LABEL: p.label}
            for p in patients if p.excluded is None]
    frame = pd.DataFrame(rows, columns=["person_id", *FEATURES, LABEL])
    frame[list(FEATURES)] = frame[list(FEATURES)].astype("float64")
    frame[LABEL] = frame[LABEL].astype("int64")
    return frame.sort_values("person_id", ignore_index=True)


def _days(rng: np.random.Generator, lo: int, hi: int) -> timedelta:
    return timedelta(days=int(rng.integers(lo, hi + 1)))


def _patient(pid: str, kind: str, prof: Profile, rng: np.random.Generator) -> Patient:
    index = date(2020, 1, 1) + _days(rng, 10, 345)
    if (index.month, index.day) == (2, 29):
        index += timedelta(days=1)
    if kind == "age_out":
        age = int(rng.choice([*range(20, 30), *range(91, 97)]))
    else:
        age = int(np.clip(np.round(rng.normal(prof.age_mean, prof.age_sd)), 30, 90))
    birth = index.replace(year=index.year - age) - _days(rng, 1, 300)
    female = bool(rng.random() < prof.female)
    older = 0.6 + 0.8 * (age - 30) / 60
    smoker = float(rng.random() < min(0.9, prof.smoker * (1.6 - older / 1.4)))
    diabetes = float(rng.random() < min(0.9, prof.diabetes * older))
    statin = float(rng.random() < min(0.9, prof.statin * older + 0.2 * diabetes))
    male = 0.0 if female else 1.0
    sbp = np.clip(rng.normal(128 + 0.5 * (age - 55) + prof.sbp_shift + 4 * diabetes, 16),
                  90, 220)
    chol = np.clip(rng.normal(5.4 - 1.0 * statin, 0.9), 2.5, 9.5)
    hdl = np.clip(rng.normal(1.5 - 0.25 * male - 0.1 * smoker, 0.3), 0.5, 3.0)
    glucose = np.clip(rng.normal(5.3 + 2.5 * diabetes, 0.8 + 1.2 * diabetes), 3.0, 25.0)
    creat = np.clip(rng.normal(75 + 15 * male + 0.3 * (age - 55), 15), 50, 400)
    features = {"age": float(age), "sex_female": float(female), "sbp": _grid(sbp, 0),
                "total_chol": _grid(chol, 2), "hdl": _grid(hdl, 2), "glucose": _grid(glucose, 2),
                "creatinine": _grid(creat, 0), "smoker": smoker, "diabetes": diabetes,
                "statin": statin}
    p = Patient(pid=pid, birth=birth, sex="female" if female else "male",
                index=None if kind == "no_index" else index, features=features)
    if kind == "no_index":
        p.excluded = EXCLUDED_NO_INDEX
        p.index = None
        p.encounters = [index]  # pseudo index: where its records are placed (not in 2020)
    elif kind == "age_out":
        p.excluded = EXCLUDED_AGE
    return p


def _grid(x: float, decimals: int) -> float:
    return float(round(float(x), decimals)) if decimals else float(round(float(x)))


def _draw_labels(patients: list[Patient], model: TrueRiskModel,
                 rng: np.random.Generator) -> None:
    x = {f: np.array([(p.features or {})[f] for p in patients]) for f in FEATURES}
    prob = model.probability(x)
    draws = rng.random(len(patients))
    for p, pr, u in zip(patients, prob, draws, strict=True):
        p.label = int(u < pr)


def _anchor(p: Patient) -> date:
    """The index date, or for a person without one, where its records are laid out."""
    return p.index if p.index is not None else p.encounters[0]


def _timeline(p: Patient, rng: np.random.Generator) -> None:
    assert p.features is not None
    idx = _anchor(p)
    if p.index is None:  # no 2020 encounter: visits in 2019 and 2021 only
        p.encounters = [date(2019, 6, 1) + _days(rng, 0, 150),
                        date(2021, 2, 1) + _days(rng, 0, 300)]
    else:
        p.encounters = [idx - _days(rng, 400, 900) for _ in range(int(rng.integers(1, 3)))]
        p.encounters.append(idx)
        p.encounters += [idx + _days(rng, 20, 1500) for _ in range(int(rng.integers(0, 3)))]
    for feature in MEASUREMENTS:
        _measurements(p, feature, idx, rng)
    f = p.features
    for kind in ("smoker", "diabetes"):
        if f[kind]:
            p.conditions.append((kind, idx - _days(rng, 30, 3000)))
    if not f["diabetes"] and rng.random() < 0.05:
        p.conditions.append(("diabetes", idx + _days(rng, 30, 1000)))  # decoy: after index
    if rng.random() < 0.3:
        p.conditions.append(("hypertension", idx - _days(rng, 30, 3000)))
    cvd = str(rng.choice(["mi", "stroke"]))
    if p.label:
        p.conditions.append((cvd, idx + _days(rng, 10, 1800)))
    elif rng.random() < 0.04:
        p.conditions.append((cvd, idx + _days(rng, 1900, 2500)))  # decoy: after 5 years
    if rng.random() < 0.04:
        p.conditions.append((cvd, idx - _days(rng, 100, 2000)))  # history: not the label
    if f["statin"]:
        p.drugs.append((str(rng.choice(STATINS)), idx - _days(rng, 30, 2000)))
    elif rng.random() < 0.05:
        p.drugs.append((str(rng.choice(STATINS)), idx + _days(rng, 30, 800)))  # decoy


def _measurements(p: Patient, feature: str, idx: date, rng: np.random.Generator) -> None:
    assert p.features is not None
    truth = p.features[feature]

    def other() -> float:
        # a decoy that differs from the truth, on the same grid, inside the contract's range
        step = 1.0 if feature in ("sbp", "creatinine") else 0.01
        base = truth if np.isfinite(truth) else _DECOY_BASE[feature]
        sign = 1 if rng.random() < 0.5 else -1
        return round(base + sign * step * int(rng.integers(1, 30)), 2)

    def sec() -> int:
        return int(rng.integers(7, 18)) * 3600 + int(rng.integers(0, 60)) * 60

    if np.isfinite(truth):
        d1 = int(rng.integers(1, 301))
        p.measurements.append((feature, idx - timedelta(days=d1), truth, sec()))
        if d1 + 5 <= 355 and rng.random() < 0.5:
            p.measurements.append((feature, idx - _days(rng, d1 + 5, 355), other(), sec()))
    p.measurements.append((feature, idx - _days(rng, 380, 800), other(), sec()))
    if rng.random() < 0.3:
        p.measurements.append((feature, idx + _days(rng, 1, 200), other(), sec()))
