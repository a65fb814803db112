"""Generate N hospitals, each exporting the same kind of patients in its own format.

Hospital ``k`` (1-based) exports as FHIR bulk NDJSON when ``k % 3 == 1``, as OMOP CDM v5.4 CSV
tables when ``k % 3 == 2`` and as a wide CSV with a column-mapping file when ``k % 3 == 0``.
Case mix differs by hospital (:data:`PROFILES`: age, sex, smoking, diabetes, statin use,
blood pressure), while the risk model (:class:`TrueRiskModel`) is the same everywhere: the
shift between sites is in who the patients are, not in how risk works.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from fedcare.core.errors import ConfigError
from fedcare.data.synth.cohort import (
    EXCLUDED_AGE,
    EXCLUDED_NO_INDEX,
    Patient,
    Profile,
    simulate,
    truth_frame,
)
from fedcare.data.synth.model import TrueRiskModel

if TYPE_CHECKING:
    import pandas as pd

PROFILES: Final = (
    Profile(age_mean=58, age_sd=11, female=0.52, smoker=0.25, diabetes=0.12, statin=0.22,
            sbp_shift=0),
    Profile(age_mean=66, age_sd=10, female=0.45, smoker=0.18, diabetes=0.20, statin=0.35,
            sbp_shift=5),
    Profile(age_mean=52, age_sd=12, female=0.58, smoker=0.32, diabetes=0.09, statin=0.15,
            sbp_shift=-3),
)
FORMATS: Final = ("fhir", "omop", "csv")
ID_STRIDE: Final = 1_000_000


@dataclass(frozen=True)
class HospitalExport:
    """One generated hospital: what it exported and what harmonizing it must give.

    ``truth``: one row per cohort member, ``person_id`` then the contract's features in order
    (canonical units, float64) and ``cvd_event`` (int64), sorted by ``person_id``; ``NaN`` marks
    the few deliberately missing measurements. Measured values lie on a grid (see
    :data:`fedcare.data.synth.model.GRID`): compare after rounding to 4 decimals.
    ``expected_rejects``: reason -> count the hospital's *adapter* must report for the
    deliberately bad records (reasons in the adapter's own words). ``injected``: the defects
    that survive the adapter (unknown unit, unknown code) for harmonization to count.
    ``excluded``: persons the cohort rules must drop, by reason. ``adapter_options``: keyword
    arguments the site's adapter needs (the OMOP site's ``source_vocabulary``).
    """

    name: str
    format: str
    paths: tuple[Path, ...]
    mapping_path: Path | None
    truth: pd.DataFrame
    expected_rejects: dict[str, int]
    injected: dict[str, int] = field(default_factory=dict)
    excluded: dict[str, int] = field(default_factory=dict)
    model: TrueRiskModel = field(default_factory=TrueRiskModel)
    adapter_options: dict[str, Any] = field(default_factory=dict)


def generate_hospitals(out_dir: str | Path, n_hospitals: int = 3,
                       patients: tuple[int, ...] | list[int] = (600, 800, 500),
                       seed: int = 0) -> list[HospitalExport]:
    """Write ``n_hospitals`` exports under ``out_dir/hospital-<k>/``; same seed, same bytes."""
    counts = list(patients)
    problems = []
    if n_hospitals < 1:
        problems.append(f"n_hospitals must be >= 1, got {n_hospitals}")
    if len(counts) != n_hospitals:
        problems.append(f"patients lists {len(counts)} hospital size(s) for {n_hospitals} "
                        "hospitals; give one size per hospital")
    if any(int(c) < 40 for c in counts):
        problems.append(f"every hospital needs at least 40 patients, got {counts}")
    if problems:
        raise ConfigError(problems, source="generate_hospitals")
    out = Path(out_dir)
    model = TrueRiskModel()
    exports = []
    for k in range(1, n_hospitals + 1):
        rng = np.random.default_rng(np.random.SeedSequence([seed, k]))
        profile = _profile(k, rng)
        people = simulate(int(counts[k - 1]), profile, k * ID_STRIDE, rng, model)
        exports.append(_export(k, out / f"hospital-{k}", people, model))
    return exports


def _profile(k: int, rng: np.random.Generator) -> Profile:
    base = PROFILES[(k - 1) % len(PROFILES)]
    if k <= len(PROFILES):
        return base
    jitter = rng.uniform(-0.05, 0.05, size=4)
    return Profile(age_mean=base.age_mean + 20 * jitter[0], age_sd=base.age_sd,
                   female=base.female + jitter[1], smoker=base.smoker + jitter[2],
                   diabetes=max(0.02, base.diabetes + jitter[3]), statin=base.statin,
                   sbp_shift=base.sbp_shift)


def _export(k: int, folder: Path, people: list[Patient], model: TrueRiskModel
            ) -> HospitalExport:
    fmt = FORMATS[(k - 1) % len(FORMATS)]
    excluded = {EXCLUDED_NO_INDEX: sum(p.excluded == EXCLUDED_NO_INDEX for p in people),
                EXCLUDED_AGE: sum(p.excluded == EXCLUDED_AGE for p in people)}
    truth = truth_frame(people)
    name = f"hospital-{k}"
    if fmt == "fhir":
        from fedcare.data.synth.fhir_export import FHIR_KEPT_DEFECTS, FHIR_REJECTS, write_fhir

        paths = write_fhir(folder / "fhir", people)
        return HospitalExport(name, fmt, tuple(paths), None, truth, dict(FHIR_REJECTS),
                              dict(FHIR_KEPT_DEFECTS), excluded, model)
    if fmt == "omop":
        from fedcare.data.synth.omop_export import (
            OMOP_KEPT_DEFECTS,
            OMOP_REJECTS,
            SOURCE_VOCABULARY,
            write_omop,
        )

        paths = write_omop(folder / "omop", people)
        return HospitalExport(name, fmt, tuple(paths), None, truth, dict(OMOP_REJECTS),
                              dict(OMOP_KEPT_DEFECTS), excluded, model,
                              {"source_vocabulary": dict(SOURCE_VOCABULARY)})
    from fedcare.data.synth.wide_export import WIDE_KEPT_DEFECTS, WIDE_REJECTS, write_wide

    table, mapping = write_wide(folder / "csv", people)
    return HospitalExport(name, fmt, (table,), mapping, truth, dict(WIDE_REJECTS),
                          dict(WIDE_KEPT_DEFECTS), excluded, model)
