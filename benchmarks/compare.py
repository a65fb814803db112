"""Run floor / fedcare / Flower on workloads A and B under measure.py and tabulate the figures.

    python benchmarks/compare.py                     # A and B, Flower if its venv exists
    python benchmarks/compare.py --repeats 3         # median of 3 runs of every variant
    python benchmarks/compare.py --workloads A --no-flower

Writes ``benchmarks/results/engine.md`` and ``benchmarks/results/engine.json``; the raw result
JSON, model .npz and logs of every run go to ``--work`` (default /tmp/fedcare-bench/runs).
Variants of one repeat run one after another (never two at once), in the order floor, fedcare,
Flower, so that a slow phase of the machine hits every variant of that repeat.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import measure  # noqa: E402
import numpy as np  # noqa: E402
import workloads as wl  # noqa: E402

DEFAULT_FLOWER_PY = Path(os.environ.get("FLWR_VENV", "/work/.flwr-venv")) / "bin" / "python"
# "Same model to float tolerance": max |delta| over every parameter must be within
# max(TOL_ABS, REORDER_FACTOR x the delta of "floor-reordered" - the floor itself with the
# weighted sum done in another float order). SGD amplifies a 1-ulp change of the average:
# in B it is ~2e-8 after round 1 and ~2e-4 after round 10, whatever code sums.
TOL_ABS = 1e-5
REORDER_FACTOR = 3.0

TARGETS = {  # (workload, variant) -> {metric: max ratio to floor}
    ("A", "fedcare"): {"per_round": 1.5, "wall": 1.5, "pss": 1.5},
    ("B", "fedcare"): {"per_round": 1.05, "pss": 1.5},
    ("B", "fedcare-w2"): {"per_round": 1.0, "pss": 1.5},
}


def variants(workload: str, flower_py: Path | None) -> list[tuple[str, list[str]]]:
    py = sys.executable
    out: list[tuple[str, list[str]]] = [
        ("floor", [py, str(HERE / "floor.py"), "--workload", workload]),
        ("floor-reordered", [py, str(HERE / "floor.py"), "--workload", workload,
                             "--aggregate", "stacked"]),
        ("fedcare", [py, str(HERE / "fedcare_run.py"), "--workload", workload, "--workers", "1"]),
    ]
    if workload == "B":
        out.append(("fedcare-w2", [py, str(HERE / "fedcare_run.py"), "--workload", workload,
                                   "--workers", "2"]))
    if flower_py is not None:
        out.append(("flower", [str(flower_py), str(HERE / "flower_run.py"),
                               "--workload", workload]))
    return out


def max_abs_diff(npz_a: str, npz_b: str) -> float | str:
    """Compare two saved models array by array, in order (names may differ between tools)."""
    a, b = np.load(npz_a), np.load(npz_b)
    ka, kb = list(a.keys()), list(b.keys())
    if len(ka) != len(kb):
        return f"layout differs: {len(ka)} vs {len(kb)} arrays"
    worst = 0.0
    for x, y in zip(ka, kb, strict=True):
        if a[x].shape != b[y].shape:
            return f"shape differs: {x}{a[x].shape} vs {y}{b[y].shape}"
        worst = max(worst, float(np.max(np.abs(a[x].astype(np.float64) - b[y]))))
    return worst


def run_one(workload: str, name: str, cmd: list[str], work: Path, rep: int) -> dict:
    out = work / f"{workload}-{name}-r{rep}.json"
    out.unlink(missing_ok=True)
    log = work / f"{workload}-{name}-r{rep}.log"
    m = measure.run_isolated([*cmd, "--out", str(out)], log)
    if m["returncode"] != 0 or not out.is_file():
        tail = log.read_text(errors="replace").strip().splitlines()[-6:]
        print(f"  {workload} {name}: FAILED (exit {m['returncode']}), see {log}")
        for line in tail:
            print("     |", line)
        return {"impl": name, "failed": True, "returncode": m["returncode"], "log": str(log),
                "error_tail": tail, "measure": m}
    res = json.loads(out.read_text())
    res["measure"] = m
    res["variant"] = name
    out.write_text(json.dumps(res, indent=2))
    print(f"  {workload} {name:<10} per-round {res['per_round_s']:.4f}s  wall {m['wall_s']:.2f}s"
          f"  PSS {m['peak_pss_mb']:.0f} MB")
    return res


def _med(xs: list[float]) -> float:
    return float(statistics.median(xs))


def summarize(workload: str, runs: dict[str, list[dict]]) -> list[dict]:
    floor_ok = [r for r in runs.get("floor", []) if not r.get("failed")]
    if not floor_ok:
        return []
    f_round = _med([r["per_round_s"] for r in floor_ok])
    f_best = min(r["per_round_s"] for r in floor_ok)
    f_wall = _med([r["measure"]["wall_s"] for r in floor_ok])
    f_pss = _med([r["measure"]["peak_pss_mb"] for r in floor_ok])
    ref_npz = floor_ok[0]["model_npz"]
    reordered = [r for r in runs.get("floor-reordered", []) if not r.get("failed")]
    reorder_delta = max_abs_diff(ref_npz, reordered[0]["model_npz"]) if reordered else 0.0
    tol = max(TOL_ABS, REORDER_FACTOR * reorder_delta if isinstance(reorder_delta, float) else 0)
    rows = []
    for name, rs in runs.items():
        ok = [r for r in rs if not r.get("failed")]
        if not ok:
            rows.append({"workload": workload, "variant": name, "failed": True,
                         "error_tail": rs[0].get("error_tail", [])})
            continue
        per_round = [r["per_round_s"] for r in ok]
        wall = [r["measure"]["wall_s"] for r in ok]
        pss = [r["measure"]["peak_pss_mb"] for r in ok]
        deltas = [max_abs_diff(ref_npz, r["model_npz"]) for r in ok]
        numeric = [d for d in deltas if isinstance(d, float)]
        row = {
            "workload": workload, "variant": name, "repeats": len(ok),
            "per_round_s": _med(per_round), "per_round_range": [min(per_round), max(per_round)],
            "per_round_ratio": _med(per_round) / f_round,
            "per_round_best_ratio": min(per_round) / f_best,
            "wall_s": _med(wall), "wall_range": [min(wall), max(wall)],
            "wall_ratio": _med(wall) / f_wall,
            "pss_mb": _med(pss), "pss_ratio": _med(pss) / f_pss,
            "max_abs_delta": max(numeric) if len(numeric) == len(deltas) else deltas[0],
            "workers": ok[0].get("workers"), "n_params": ok[0].get("n_params"),
            "first_round_s": _med([r["round_seconds"][0] for r in ok]),
            "peak_processes": max(r["measure"]["peak_processes"] for r in ok),
        }
        target = TARGETS.get((workload, name))
        if target:
            checks = {}
            if "per_round" in target:
                checks["per_round"] = row["per_round_ratio"] <= target["per_round"]
            if "wall" in target:
                checks["wall"] = row["wall_ratio"] <= target["wall"]
            if "pss" in target:
                checks["pss"] = row["pss_ratio"] <= target["pss"]
            d = row["max_abs_delta"]
            checks["model"] = isinstance(d, float) and d <= tol
            row["model_tolerance"] = tol
            row["targets"] = target
            row["meets"] = checks
        rows.append(row)
    return rows


def _fmt_load(load) -> str:
    return "/".join(f"{x:.1f}" for x in load)


def _fmt_delta(d) -> str:
    return f"{d:.1e}" if isinstance(d, float) else str(d)


def to_markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Engine benchmark: fedcare vs the floor vs Flower",
        "",
        f"Run {meta['date']} on {meta['machine']}; {meta['repeats']} repeat(s), median shown "
        "(range in brackets when repeated). Floor = plain loop + numpy average (1 torch thread). "
        f"Load average (1/5/15 min) at start {_fmt_load(meta['loadavg_start'])}, at end "
        f"{_fmt_load(meta['loadavg_end'])}: above ~0.3 other work shared the 2 cores.",
        "",
        "| workload | variant | per-round s | × floor | × floor (best) | total wall s | × floor "
        "| peak PSS MB | × floor | max abs Δ vs floor | targets |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("failed"):
            lines.append(f"| {r['workload']} | {r['variant']} | FAILED | | | | | | | | "
                         f"{' / '.join(r['error_tail'][-1:])} |")
            continue
        pr = f"{r['per_round_s']:.4f}"
        wall = f"{r['wall_s']:.2f}"
        if r["repeats"] > 1:
            pr += f" [{r['per_round_range'][0]:.4f}–{r['per_round_range'][1]:.4f}]"
            wall += f" [{r['wall_range'][0]:.2f}–{r['wall_range'][1]:.2f}]"
        meets = r.get("meets")
        tgt = "—" if not meets else ", ".join(
            f"{k} {'ok' if v else 'MISSED'}" for k, v in meets.items())
        lines.append(
            f"| {r['workload']} | {r['variant']} | {pr} | {r['per_round_ratio']:.2f} | "
            f"{r['per_round_best_ratio']:.2f} | {wall} | "
            f"{r['wall_ratio']:.2f} | {r['pss_mb']:.0f} | {r['pss_ratio']:.2f} | "
            f"{_fmt_delta(r['max_abs_delta'])} | {tgt} |")
    lines += [
        "",
        "Per-round: median of rounds 3..N of each run, then the median over repeats; "
        "'× floor (best)' divides the fastest repeat by the floor's fastest repeat (the least "
        "disturbed by other work). Total wall: process start to exit (measure.py). "
        "Peak PSS: whole process tree, sampled every 20 ms. Targets (fedcare): A per-round and "
        "wall ≤ 1.5× floor; B workers=1 per-round ≤ 1.05×; B workers=2 per-round < 1×; "
        f"PSS ≤ 1.5×; max |Δ| ≤ max({TOL_ABS:g}, {REORDER_FACTOR:g} × Δ of floor-reordered). "
        "floor-reordered is the floor with its weighted sum done in another float order "
        "(normalised float32 weights @ stacked updates): its Δ is what float rounding alone "
        "does to the final model; its timings are not a reference.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", nargs="+", choices=sorted(wl.WORKLOADS), default=["A", "B"])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--flower", dest="flower", action="store_true", default=None,
                    help="require Flower (fail if its venv is missing)")
    ap.add_argument("--no-flower", dest="flower", action="store_false")
    ap.add_argument("--flower-python", type=Path, default=DEFAULT_FLOWER_PY)
    ap.add_argument("--only", nargs="+", help="run only these variants (floor always runs)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fedcare-bench/runs"))
    ap.add_argument("--results", type=Path, default=HERE / "results")
    ap.add_argument("--data-dir", type=Path, default=wl.DEFAULT_DATA_DIR)
    args = ap.parse_args()

    flower_py: Path | None = args.flower_python
    if args.flower is False:
        flower_py = None
    elif not args.flower_python.is_file():
        if args.flower:
            sys.exit(f"Flower venv python {args.flower_python} not found; run "
                     "bash benchmarks/setup_flower.sh")
        print(f"(Flower skipped: {args.flower_python} not found; bash benchmarks/setup_flower.sh)")
        flower_py = None

    args.work.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    os.environ["FEDCARE_BENCH_DATA"] = str(args.data_dir)
    all_rows: list[dict] = []
    raw: dict[str, dict[str, list[dict]]] = {}
    for workload in args.workloads:
        wl.prepare(workload, args.data_dir)  # outside any measurement
        vs = variants(workload, flower_py)
        if args.only:
            vs = [v for v in vs if v[0] == "floor" or v[0] in args.only]
        runs: dict[str, list[dict]] = {name: [] for name, _ in vs}
        for rep in range(args.repeats):
            print(f"workload {workload}, repeat {rep + 1}/{args.repeats}")
            for name, cmd in vs:
                runs[name].append(run_one(workload, name, [*cmd, "--data-dir", str(args.data_dir)],
                                          args.work, rep))
        raw[workload] = runs
        all_rows += summarize(workload, runs)

    load = os.getloadavg()
    meta = {"date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
                       f"Python {platform.python_version()}",
            "repeats": args.repeats, "loadavg_start": load_start, "loadavg_end": load}
    md = to_markdown(all_rows, meta)
    print()
    print(md)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "engine.md").write_text(md)
    (args.results / "engine.json").write_text(json.dumps(
        {"meta": meta, "rows": all_rows,
         "runs": {w: {n: [{k: v for k, v in r.items() if k != "param_names"} for r in rs]
                      for n, rs in runs.items()} for w, runs in raw.items()}},
        indent=2))


if __name__ == "__main__":
    main()
