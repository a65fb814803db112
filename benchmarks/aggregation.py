"""Aggregation throughput and the memory of a 100-site study.

    python benchmarks/aggregation.py                  # both parts, writes results/aggregation.md
    python benchmarks/aggregation.py --skip-sites100  # throughput only

Part 1 - averaging K=10 updates of P=10 M float32 parameters (400 MB of input), median of
``--repeats`` timed runs after one warm-up, reported as GB/s of input (bytes of the K updates /
seconds), next to ``np.copyto`` of the same 400 MB into a preallocated buffer:

  (i)   floor: ``sum(w_i * p_i) / sum(w)`` over K separate arrays (a temporary per site);
  (ii)  ``np.matmul(w, stack, out=out)`` on a preallocated (K, P) float32 matrix and output;
  (iii) ``fedcare.strategies.aggregate.weighted_average_rows(stack, weights, out=out)`` (and
        with ``out=None``), if fedcare provides it.

Matrix products run with numpy's BLAS at its default thread count and again limited to 1 thread
(threadpoolctl), because the benchmark machine has 2 cores.

Part 2 - peak PSS (process tree, measure.py) of ``fedcare.simulate`` with 100 synthetic sites,
a ~1 M-parameter MLP (100 -> 1000 -> 900 -> 1), 16 rows per site, 2 rounds; target <= 4 GB.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

K = 10
P = 10_000_000
SITES100_ROWS = 16


def _time(fn, repeats: int) -> list[float]:
    fn()  # warm-up (page faults of fresh outputs, BLAS thread start)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def throughput(repeats: int) -> dict:
    rng = np.random.default_rng(0)
    updates = [rng.standard_normal(P, dtype=np.float32) for _ in range(K)]
    stack = np.empty((K, P), dtype=np.float32)
    for i, u in enumerate(updates):
        stack[i] = u
    counts = rng.integers(50, 500, K)
    w32 = (counts / counts.sum()).astype(np.float32)
    out = np.empty(P, dtype=np.float32)
    dst = np.empty_like(stack)
    in_bytes = stack.nbytes

    def floor():
        return sum(int(c) * u for c, u in zip(counts, updates, strict=True)) / int(counts.sum())

    cases: list[tuple[str, object]] = [
        ("np.copyto of the same bytes (reference)", lambda: np.copyto(dst, stack)),
        ("(i) floor: sum(w_i * p_i) / sum(w), per-site temporaries", floor),
        ("(ii) np.matmul(w, stack, out=out), preallocated", lambda: np.matmul(w32, stack, out=out)),
    ]
    fedcare_fn = None
    try:
        from fedcare.strategies.aggregate import weighted_average_rows as fedcare_fn
    except ImportError as exc:
        print(f"(iii) skipped: {exc}")
    if fedcare_fn is not None:
        cases += [
            ("(iii) fedcare weighted_average_rows(stack, w, out=out)",
             lambda: fedcare_fn(stack, counts, out=out)),
            ("(iii) fedcare weighted_average_rows(stack, w) (allocates out)",
             lambda: fedcare_fn(stack, counts)),
        ]

    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:  # pragma: no cover
        threadpool_limits = None
        threadpool_info = lambda: []  # noqa: E731
    blas = [{k: i.get(k) for k in ("internal_api", "num_threads", "version")}
            for i in threadpool_info() if i.get("user_api") == "blas"]

    ref = floor()
    rows = []
    for label, fn in cases:
        settings = [("default", None)]
        if threadpool_limits is not None and ("matmul" in label or "fedcare" in label):
            settings.append(("1", 1))
        for threads_label, limit in settings:
            if limit is None:
                ts = _time(fn, repeats)
            else:
                with threadpool_limits(limits=limit, user_api="blas"):
                    ts = _time(fn, repeats)
            med = statistics.median(ts)
            rows.append({"case": label, "blas_threads": threads_label, "median_s": med,
                         "min_s": min(ts), "max_s": max(ts), "gb_per_s": in_bytes / med / 1e9})
            print(f"  {label:<64} BLAS threads {threads_label:<7} {med * 1000:8.1f} ms  "
                  f"{in_bytes / med / 1e9:6.2f} GB/s")
    got = {"matmul": np.matmul(w32, stack)}
    if fedcare_fn is not None:
        got["fedcare"] = fedcare_fn(stack, counts)
    agree = {k: float(np.max(np.abs(v - ref))) for k, v in got.items()}
    return {"K": K, "P": P, "input_bytes": in_bytes, "repeats": repeats, "rows": rows,
            "blas": blas, "max_abs_diff_vs_floor": agree}


def sites100_config(workers: int) -> dict:
    return {
        "study": {"name": "bench-100-sites", "seed": 0, "rounds": 2},
        "data": {"source": "synthetic", "sites": 100, "rows_per_site": SITES100_ROWS,
                 "n_features": 100, "classes": 2, "partition": "iid", "test_fraction": 0.0},
        "model": {"name": "mlp", "hidden": [1000, 900]},
        "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.05, "optimizer": "sgd"},
        "strategy": {"name": "fedavg"},
        "baselines": {"local": False, "centralized": False},
        "run": {"workers": workers, "threads_per_site": 1, "evaluate_every": 0},
    }


def sites100_child(out: Path, workers: int) -> None:
    t0 = time.perf_counter()
    import fedcare

    h = fedcare.simulate(sites100_config(workers), output_dir=None)
    d = h.to_dict()
    out.write_text(json.dumps({
        "workers": d.get("workers"), "sites": len(d.get("sites", [])),
        "n_params": int(sum(np.asarray(a).size for a in h.final_parameters.values())),
        "round_seconds": [r.seconds for r in h.rounds],
        "internal_total_s": time.perf_counter() - t0}))


def sites100(workers_list: list[int], work: Path) -> list[dict]:
    import measure

    rows = []
    for workers in workers_list:
        out = work / f"sites100-w{workers}.json"
        log = work / f"sites100-w{workers}.log"
        out.unlink(missing_ok=True)
        m = measure.run_isolated([sys.executable, __file__, "--sites100-child", str(out),
                                  "--workers", str(workers)], log)
        if m["returncode"] != 0 or not out.is_file():
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            print(f"  100 sites, workers={workers}: FAILED: {tail}")
            rows.append({"workers_requested": workers, "failed": True, "error_tail": tail})
            continue
        r = json.loads(out.read_text())
        r.update({"workers_requested": workers, "wall_s": m["wall_s"],
                  "peak_pss_mb": m["peak_pss_mb"], "peak_processes": m["peak_processes"],
                  "meets_4gb": m["peak_pss_mb"] <= 4096})
        print(f"  100 sites, workers={workers}: peak PSS {m['peak_pss_mb']:.0f} MB, "
              f"wall {m['wall_s']:.1f}s, rounds {[round(s, 2) for s in r['round_seconds']]}")
        rows.append(r)
    return rows


def to_markdown(tp: dict | None, s100: list[dict] | None, date: str) -> str:
    lines = ["# Aggregation benchmark", "",
             f"Run {date} on {os.cpu_count()} cores (noisy when others share the machine).", ""]
    if tp:
        lines += [f"Averaging K={tp['K']} updates of P={tp['P']:,} float32 values "
                  f"({tp['input_bytes'] / 1e6:.0f} MB of input); median of {tp['repeats']} runs "
                  "after a warm-up; GB/s = input bytes / time. BLAS: "
                  + ", ".join(f"{b['internal_api']} {b['version']} ({b['num_threads']} threads)"
                              for b in tp["blas"]), "",
                  "| method | BLAS threads | median ms | GB/s of input |", "|---|---|---|---|"]
        for r in tp["rows"]:
            lines.append(f"| {r['case']} | {r['blas_threads']} | {r['median_s'] * 1000:.1f} | "
                         f"{r['gb_per_s']:.2f} |")
        lines += ["", "Max |difference| to the floor's result: "
                  + ", ".join(f"{k} {v:.1e}" for k, v in tp["max_abs_diff_vs_floor"].items()), ""]
    if s100:
        lines += [f"## 100 sites, 1 M-parameter MLP, {SITES100_ROWS} rows/site, 2 rounds "
                  "(fedcare.simulate)", "",
                  "| workers | peak PSS MB (tree) | ≤ 4 GB | wall s | round s |",
                  "|---|---|---|---|---|"]
        for r in s100:
            if r.get("failed"):
                lines.append(f"| {r['workers_requested']} | FAILED | | | "
                             f"{' / '.join(r['error_tail'][-1:])} |")
                continue
            lines.append(f"| {r['workers_requested']} (used {r['workers']}) | "
                         f"{r['peak_pss_mb']:.0f} | {'yes' if r['meets_4gb'] else 'NO'} | "
                         f"{r['wall_s']:.1f} | "
                         f"{', '.join(f'{s:.2f}' for s in r['round_seconds'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-sites100", action="store_true")
    ap.add_argument("--sites100-workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--work", type=Path, default=Path("/tmp/fedcare-bench/runs"))
    ap.add_argument("--results", type=Path, default=HERE / "results")
    ap.add_argument("--sites100-child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sites100_child is not None:
        sites100_child(args.sites100_child, args.workers)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    date = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    tp = None if args.skip_throughput else throughput(args.repeats)
    s100 = None if args.skip_sites100 else sites100(args.sites100_workers, args.work)
    md = to_markdown(tp, s100, date)
    print()
    print(md)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "aggregation.md").write_text(md)
    (args.results / "aggregation.json").write_text(json.dumps(
        {"date": date, "throughput": tp, "sites100": s100}, indent=2))


if __name__ == "__main__":
    main()
