"""FHIR adapter throughput: one site's bulk export of >= 100,000 resources, per validation mode.

The site is the synthetic FHIR hospital (fedcare.data.synth) scaled up: Patient, Encounter,
Observation (incl. blood-pressure panels with components), Condition, MedicationRequest
NDJSON files. Each mode is run in a fresh process so import and model-building costs count,
as they would for a node reading its data once. Target: < 60 s per 100,000 resources.

Run:  python benchmarks/adapters_fhir.py [--patients 5200] [--repeats 3] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

_CHILD = """
import sys, time, json
t0 = time.perf_counter()
from pathlib import Path
from fedcare.data.adapters.fhir import load_fhir
paths = sorted(Path(sys.argv[1]).glob('*.ndjson'))
t1 = time.perf_counter()
rec = load_fhir(paths, validate=sys.argv[2])
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "total_s": t2 - t0,
                  "resources": sum(rec.source_counts.values()), "events": len(rec.events),
                  "persons": len(rec.persons), "rejects": sum(rec.rejects.values())}))
"""


def _write_site(folder: Path, patients: int) -> None:
    import numpy as np

    from fedcare.data.synth.cohort import simulate
    from fedcare.data.synth.fhir_export import write_fhir
    from fedcare.data.synth.generate import PROFILES
    from fedcare.data.synth.model import TrueRiskModel

    people = simulate(patients, PROFILES[0], 1_000_000, np.random.default_rng(0),
                      TrueRiskModel())
    write_fhir(folder, people)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=5200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp)
        t = time.perf_counter()
        _write_site(site, args.patients)
        print(f"wrote the site in {time.perf_counter() - t:.1f} s")
        for mode in ("none", "sample", "all"):
            runs = []
            for _ in range(args.repeats):
                out = subprocess.run([sys.executable, "-c", _CHILD, str(site), mode],
                                     capture_output=True, text=True, check=True)
                runs.append(json.loads(out.stdout))
            best = min(runs, key=lambda r: r["total_s"])
            best["median_total_s"] = statistics.median(r["total_s"] for r in runs)
            best["us_per_resource"] = 1e6 * best["load_s"] / best["resources"]
            results[mode] = best
            print(f"validate={mode:6s} {best['resources']:,} resources: load "
                  f"{best['load_s']:.2f} s ({best['us_per_resource']:.0f} us/resource), with "
                  f"imports {best['total_s']:.2f} s (median {best['median_total_s']:.2f} s)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "adapters_fhir.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# FHIR adapter throughput", "",
             "| validate | resources | load s | us/resource | with imports s |",
             "|---|---|---|---|---|"]
    lines += [f"| {m} | {r['resources']:,} | {r['load_s']:.2f} | {r['us_per_resource']:.0f} | "
              f"{r['total_s']:.2f} |" for m, r in results.items()]
    (args.out / "adapters_fhir.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
