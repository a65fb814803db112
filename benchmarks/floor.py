"""The floor: a plain Python loop over sites + a numpy weighted average. No framework.

    python benchmarks/floor.py --workload A --out /tmp/floor-A.json

Writes ``result.json`` (per-round seconds, in-process total) and the final model as
``<out stem>.npz`` next to it. Per-round time = wall time of one iteration of the round loop
(train every site one after another, then average). One torch thread (``--threads``).
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import workloads as wl  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", choices=sorted(wl.WORKLOADS), required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data-dir", type=Path, default=wl.DEFAULT_DATA_DIR)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--aggregate", choices=["sum", "stacked"], default="sum",
                    help="sum: the floor, sum(w_i*p_i)/sum(w); stacked: a diagnostic reordering")
    ap.add_argument("--rounds", type=int, help="override the workload's round count (checks)")
    args = ap.parse_args()
    if args.rounds:
        wl.override_rounds(args.workload, args.rounds)
    w = wl.WORKLOADS[args.workload]
    torch.set_num_threads(args.threads)

    wl.ensure(args.workload, args.data_dir)  # writes the CSVs only if missing
    t_data = time.perf_counter()
    sites, _ = wl.load_sites(args.workload, args.data_dir)
    trainers = [wl.SiteTrainer(x, y) for x, y in sites]
    counts = [t.n for t in trainers]
    model = wl.build_model(args.workload, sites[0][0].shape[1], wl.STUDY_SEED)
    names = list(model.state_dict().keys())
    global_w = wl.get_weights(model)
    t_loop = time.perf_counter()

    average = wl.weighted_average if args.aggregate == "sum" else wl.weighted_average_stacked
    round_seconds: list[float] = []
    for rnd in range(1, w.rounds + 1):
        t0 = time.perf_counter()
        updates = [tr.fit(model, global_w, seed=wl.site_round_seed(wl.STUDY_SEED, rnd, i),
                          lr=w.lr, epochs=w.local_epochs, batch_size=w.batch_size)
                   for i, tr in enumerate(trainers)]
        global_w = average(updates, counts)
        round_seconds.append(time.perf_counter() - t0)
    t_end = time.perf_counter()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    npz = args.out.with_suffix(".npz")
    wl.save_model(npz, names, global_w)
    result = {
        "impl": "floor", "workload": args.workload, "aggregate": args.aggregate,
        "threads": args.threads, "rounds": w.rounds, "n_sites": len(trainers),
        "n_params": int(sum(a.size for a in global_w)),
        "round_seconds": round_seconds,
        "per_round_s": wl.steady_median(round_seconds),
        "setup_s": t_loop - t_data, "loop_s": t_end - t_loop,
        "internal_total_s": time.perf_counter() - T_START,
        "model_npz": str(npz), "param_names": names,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(f"floor {args.workload}: per-round {result['per_round_s']:.4f}s "
          f"loop {result['loop_s']:.2f}s params {result['n_params']}")


if __name__ == "__main__":
    main()
