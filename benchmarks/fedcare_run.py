"""The same workload through fedcare's Python API (``fedcare.simulate``).

    python benchmarks/fedcare_run.py --workload A --out /tmp/fedcare-A.json
    python benchmarks/fedcare_run.py --workload B --workers 2 --out /tmp/fedcare-B-w2.json

fedcare reads the same per-site CSVs as the floor and Flower (``data.source = "files"``).
Per-round time is the wall time between consecutive progress callbacks (fedcare calls them
after everything a round does - same definition as the floor's loop iteration); fedcare's own
``history.rounds[i].seconds`` is recorded beside it. The final model is
``history.final_parameters`` saved as ``<out stem>.npz``. No output folder is written
(``output_dir=None``), no baselines, no evaluation rounds, one torch thread per site.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import workloads as wl  # noqa: E402


def make_config(workload: str, data_dir: Path, workers: int, threads: int = 1) -> dict:
    w = wl.WORKLOADS[workload]
    model: dict = {"name": w.model_name}
    if w.hidden:
        model["hidden"] = list(w.hidden)
    return {
        "study": {"name": f"bench-{workload.lower()}", "seed": wl.STUDY_SEED,
                  "rounds": w.rounds},
        "data": {"source": "files", "label": "label", "test_fraction": 0.0,
                 "standardize": True,
                 "site": [{"name": f"site-{i}", "path": str(p.resolve())}
                          for i, p in enumerate(wl.site_paths(workload, data_dir))]},
        "model": model,
        "train": {"local_epochs": w.local_epochs, "batch_size": w.batch_size, "lr": w.lr,
                  "optimizer": "sgd"},
        "strategy": {"name": "fedavg"},
        "baselines": {"local": False, "centralized": False},
        "run": {"workers": workers, "threads_per_site": threads, "evaluate_every": 0},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", choices=sorted(wl.WORKLOADS), required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per site")
    ap.add_argument("--data-dir", type=Path, default=wl.DEFAULT_DATA_DIR)
    ap.add_argument("--rounds", type=int, help="override the workload's round count (checks)")
    args = ap.parse_args()
    if args.rounds:
        wl.override_rounds(args.workload, args.rounds)

    wl.ensure(args.workload, args.data_dir)
    import fedcare

    cfg = make_config(args.workload, args.data_dir, args.workers, args.threads)
    stamps: dict[int, float] = {}

    def on_progress(phase: str, round_: int, total: int, record) -> None:
        if phase == "federated":
            stamps[round_] = time.perf_counter()

    t_sim = time.perf_counter()
    history = fedcare.simulate(cfg, output_dir=None, progress=on_progress)
    t_end = time.perf_counter()

    final = history.final_parameters
    names = list(final.keys())
    arrays = [np.asarray(final[k]) for k in names]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    npz = args.out.with_suffix(".npz")
    wl.save_model(npz, names, arrays)
    reported = [float(r.seconds) for r in history.rounds]
    # Loop-iteration wall time, as for the floor: between consecutive progress callbacks (the
    # engine calls them after everything a round does). Round 1 has no previous stamp: its own
    # figure. fedcare's RoundRecord.seconds is kept too ("fedcare_reported_seconds").
    order = sorted(stamps)
    secs = ([reported[0]] + [stamps[b] - stamps[a] for a, b in itertools.pairwise(order)]
            if len(order) == len(reported) else reported)
    d = history.to_dict()
    result = {
        "impl": "fedcare", "workload": args.workload, "workers_requested": args.workers,
        "workers": d.get("workers"), "fedcare": getattr(fedcare, "__version__", "?"),
        "rounds": len(secs), "n_sites": len(d.get("sites", [])),
        "n_params": int(sum(a.size for a in arrays)),
        "round_seconds": secs, "per_round_s": wl.steady_median(secs),
        "round_seconds_source": "progress-callback intervals" if secs is not reported
        else "history.rounds[i].seconds",
        "fedcare_reported_seconds": reported,
        "fedcare_reported_per_round_s": wl.steady_median(reported),
        "train_seconds": [float(r.train_seconds) for r in history.rounds],
        "aggregate_seconds": [float(r.aggregate_seconds) for r in history.rounds],
        "simulate_s": t_end - t_sim, "fedcare_timing": d.get("timing", {}),
        "internal_total_s": time.perf_counter() - T_START,
        "model_npz": str(npz), "param_names": names,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(f"fedcare {args.workload} workers={args.workers}: per-round "
          f"{result['per_round_s']:.4f}s simulate {result['simulate_s']:.2f}s")


if __name__ == "__main__":
    main()
