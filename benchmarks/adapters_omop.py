"""OMOP adapter throughput: 1 M measurement rows from CSV -> CanonicalRecords -> features.

    python benchmarks/adapters_omop.py                  # 1 M rows, writes results/adapters_omop.*
    python benchmarks/adapters_omop.py --rows 200000

Generates an OMOP CDM v5.4 CSV extract (``--persons`` persons, ``--rows`` measurement rows over
the demo contract's five lab concepts with mixed units, a visit per person in 2020, a few
conditions and drugs per person), then times, median of ``--repeats`` runs after a warm-up:

  (i)   ``load_omop`` (DuckDB reads, casts, classifies rejects, joins persons; pandas result);
  (ii)  ``build_features`` with ``examples/contracts/cardio.toml`` on the result.

Target: (i) well under a minute for 1 M rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
CONTRACT = HERE.parent / "examples" / "contracts" / "cardio.toml"

LABS = [  # concept, unit, value generator (mean, sd)
    ("3027114", "mg/dL", (200.0, 40.0)),
    ("3007070", "mmol/L", (1.3, 0.3)),
    ("3004501", "mg/dL", (100.0, 20.0)),
    ("3016723", "umol/L", (90.0, 20.0)),
    ("3004249", "mm[Hg]", (130.0, 15.0)),  # SBP: matched through its LOINC source value
]


def generate(folder: Path, persons: int, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    pid = np.arange(1, persons + 1)
    pd.DataFrame({
        "person_id": pid, "gender_concept_id": rng.choice([8507, 8532], persons),
        "year_of_birth": rng.integers(1930, 1990, persons),
        "month_of_birth": rng.integers(1, 13, persons),
        "day_of_birth": rng.integers(1, 29, persons),
    }).to_csv(folder / "person.csv", index=False)
    base = np.datetime64("2020-01-01")
    pd.DataFrame({
        "visit_occurrence_id": pid, "person_id": pid, "visit_concept_id": 9202,
        "visit_start_date": base + rng.integers(0, 366, persons).astype("timedelta64[D]"),
    }).to_csv(folder / "visit_occurrence.csv", index=False)
    lab = rng.integers(0, len(LABS), rows)
    mean = np.array([m for _, _, (m, _) in LABS])[lab]
    sd = np.array([s for _, _, (_, s) in LABS])[lab]
    pd.DataFrame({
        "measurement_id": np.arange(rows), "person_id": rng.integers(1, persons + 1, rows),
        "measurement_concept_id": np.array([c for c, _, _ in LABS])[lab],
        "measurement_date": base - rng.integers(0, 700, rows).astype("timedelta64[D]"),
        "value_as_number": np.round(rng.normal(mean, sd), 2),
        "unit_source_value": np.array([u for _, u, _ in LABS])[lab],
        "measurement_source_value": np.where(lab == len(LABS) - 1, "8480-6", ""),
    }).to_csv(folder / "measurement.csv", index=False)
    n_cond = persons * 3
    pd.DataFrame({
        "condition_occurrence_id": np.arange(n_cond),
        "person_id": rng.integers(1, persons + 1, n_cond),
        "condition_concept_id": 0,
        "condition_start_date": base + rng.integers(-3000, 2500, n_cond).astype("timedelta64[D]"),
        "condition_source_value": rng.choice(["I21.4", "I63.9", "E11.9", "F17.210", "J45"],
                                             n_cond),
    }).to_csv(folder / "condition_occurrence.csv", index=False)
    pd.DataFrame({
        "drug_exposure_id": pid, "person_id": pid,
        "drug_concept_id": rng.choice([1545958, 1112807], persons),
        "drug_exposure_start_date": base - rng.integers(0, 900, persons).astype("timedelta64[D]"),
    }).to_csv(folder / "drug_exposure.csv", index=False)


def main() -> None:
    from fedcare.data.adapters.omop import load_omop
    from fedcare.data.contract import load_contract
    from fedcare.data.features import build_features

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--persons", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    contract = load_contract(CONTRACT)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        generate(folder, args.persons, args.rows)
        gen_s = time.perf_counter() - t
        size = sum(p.stat().st_size for p in folder.iterdir())
        vocab = {"condition": "ICD10CM", "measurement": "LOINC"}
        load_omop(folder, source_vocabulary=vocab)  # warm-up (imports, page cache)
        load_s, feat_s = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            records = load_omop(folder, source_vocabulary=vocab)
            load_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            table = build_features(contract, records)
            feat_s.append(time.perf_counter() - t)
    res = {
        "date": dt.date.today().isoformat(), "rows": args.rows, "persons": args.persons,
        "csv_mb": round(size / 1e6, 1), "generate_s": round(gen_s, 2),
        "load_omop_s": round(statistics.median(load_s), 2),
        "build_features_s": round(statistics.median(feat_s), 2),
        "events": len(records.events), "cohort_rows": table.n_rows,
        "rejects": dict(records.rejects),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "adapters_omop.json").write_text(json.dumps(res, indent=2))
    (args.out / "adapters_omop.md").write_text(
        f"# OMOP adapter ({res['date']})\n\n"
        f"{args.rows:,} measurement rows, {args.persons:,} persons, {res['csv_mb']} MB CSV; "
        f"median of {args.repeats}.\n\n| step | seconds |\n|---|---|\n"
        f"| load_omop (DuckDB) | {res['load_omop_s']} |\n"
        f"| build_features (cardio contract) | {res['build_features_s']} |\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
