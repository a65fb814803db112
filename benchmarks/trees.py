"""Federated gradient-boosted trees (fedcare.trees, issue 15) against XGBoost on pooled rows.

    python benchmarks/trees.py            # writes results/trees.md and results/trees.json
    python benchmarks/trees.py --quick    # breast cancer only

The federation is the pure-numpy reference loop (``fedcare.trees.simulate.fit_federated``: no
engine, no network): sites send a count sketch once, then one gradient/hessian histogram per
tree level; the hub adds them and chooses the splits. It is compared with ``xgboost.train``
(tree_method="hist", the same max_bin, eta, max_depth, lambda, gamma, min_child_weight and
number of trees, 1 thread) on the same training rows, by test AUC. Data sets:

* sklearn's breast cancer (569 rows, 30 features), 70/30 split, 4 sites;
* ``make_classification`` (seed 0): 100,000 rows, 20 features (10 informative, 5 redundant),
  5% of the labels flipped, 5% of the values missing at random; 80/20 split, 4 and 8 sites.
  (No bundled sklearn data set has 50,000 rows, and ``fetch_*`` needs the network.)

Sites are label-skewed: each class is dealt to the sites in Dirichlet(1) shares. "fixed point"
runs quantize every array a site sends to 2^-20 steps, as the secure-aggregation grid would;
"left-only" runs send only the left children's histograms below the root (the hub subtracts);
grid "ranges" places the sketch's fine grid on the envelope of the sites' (outward-rounded)
ranges, "moments" on mean +- 8 std from summed moments (every message a sum).
Bytes are those of the site's arrays at 8 bytes per value (float64, or the int64 of the
fixed-point grid); seconds are this process's (2 shared cores), sites run one after another.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb
from sklearn.datasets import load_breast_cancer, make_classification
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from fedcare.trees.options import TreeOptions, tree_options
from fedcare.trees.simulate import Trace, fit_federated

HERE = Path(__file__).resolve().parent


def dirichlet_sites(X: np.ndarray, y: np.ndarray, n_sites: int, alpha: float,
                    seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    owner = np.empty(len(y), dtype=np.int64)
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        shares = rng.dirichlet(np.full(n_sites, alpha))
        owner[rows] = np.minimum(np.searchsorted(np.cumsum(shares), rng.random(rows.size)),
                                 n_sites - 1)
    return [(X[owner == s], y[owner == s]) for s in range(n_sites)]


def quantized(a: np.ndarray) -> np.ndarray:
    return np.round(a * 2.0**20) / 2.0**20


def pooled_xgboost(o: TreeOptions, X: np.ndarray, y: np.ndarray,
                   Xt: np.ndarray) -> tuple[np.ndarray, float]:
    params = {"objective": o.objective, "tree_method": "hist", "max_bin": o.max_bin,
              "eta": o.learning_rate, "max_depth": o.max_depth, "lambda": o.reg_lambda,
              "gamma": o.gamma, "min_child_weight": o.min_child_weight, "nthread": 1}
    started = time.perf_counter()
    booster = xgb.train(params, xgb.DMatrix(X, label=y), num_boost_round=o.n_trees)
    seconds = time.perf_counter() - started
    return booster.predict(xgb.DMatrix(Xt)), seconds


def run(name: str, data: tuple[np.ndarray, ...], o: TreeOptions, n_sites: int,
        fixed_point: bool, subtract: bool, grid: str = "ranges") -> dict[str, Any]:
    X, Xt, y, yt = data
    sites = dirichlet_sites(X, y, n_sites, alpha=1.0, seed=7)
    trace = Trace()
    started = time.perf_counter()
    ens = fit_federated(sites, o, encode=quantized if fixed_point else None, trace=trace,
                        subtract=subtract, grid=grid)  # type: ignore[arg-type]
    wall = time.perf_counter() - started
    p_pooled, xgb_seconds = pooled_xgboost(o, X, y, Xt)
    auc_fed = float(roc_auc_score(yt, ens.predict_proba(Xt)))
    auc_pooled = float(roc_auc_score(yt, p_pooled))
    hist_bytes = [8 * n for n in trace.histograms]
    row = {
        "data": name, "rows": len(y), "features": X.shape[1], "sites": n_sites,
        "site_rows": [len(s[1]) for s in sites], "fixed_point": fixed_point,
        "left_only": subtract, "grid": grid,
        "options": o.model_dump(),
        "auc_federated": auc_fed, "auc_pooled_xgboost": auc_pooled,
        "auc_gap_points": 100 * (auc_pooled - auc_fed),
        "rounds": trace.rounds, "seconds_total": wall,
        "seconds_per_tree": wall / o.n_trees,
        "site_seconds_per_tree": trace.site_seconds / o.n_trees,
        "hub_seconds_per_tree": trace.hub_seconds / o.n_trees,
        "xgboost_seconds_per_tree": xgb_seconds / o.n_trees,
        "sketch_bytes_per_site": 8 * trace.sketch,
        "histogram_bytes_per_level": {
            str(lv): 8 * (2 ** (lv - 1 if subtract and lv else lv)) * X.shape[1]
            * (o.max_bin + 1) * 2 for lv in range(o.max_depth)},
        "histogram_bytes_per_tree_per_site": sum(hist_bytes) / o.n_trees,
        "exported_model_bytes": len(ens.to_xgboost_json()),
    }
    print(f"{name:<14} sites={n_sites} fixed={fixed_point!s:<5} left-only={subtract!s:<5} "
          f"AUC fed {auc_fed:.4f} "
          f"pooled {auc_pooled:.4f} gap {row['auc_gap_points']:+.2f} pt  "
          f"{row['seconds_per_tree'] * 1e3:.0f} ms/tree  "
          f"{row['histogram_bytes_per_tree_per_site'] / 1e6:.2f} MB/tree/site", flush=True)
    return row


def datasets(quick: bool) -> dict[str, tuple[np.ndarray, ...]]:
    X, y = load_breast_cancer(return_X_y=True)
    out = {"breast_cancer": tuple(train_test_split(X, y.astype(np.float64), test_size=0.3,
                                                   random_state=0, stratify=y))}
    if not quick:
        X, y = make_classification(n_samples=100_000, n_features=20, n_informative=10,
                                   n_redundant=5, flip_y=0.05, random_state=0)
        X[np.random.default_rng(0).random(X.shape) < 0.05] = np.nan
        out["synthetic_100k"] = tuple(train_test_split(X, y.astype(np.float64), test_size=0.2,
                                                       random_state=0, stratify=y))
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Federated gradient-boosted trees (fedcare.trees) vs pooled XGBoost",
        "",
        f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, xgboost {xgb.__version__}, on 2 "
        "shared cores. Method: see the docstring of `benchmarks/trees.py`.",
        "",
        "| data | train rows | sites | fixed point | left-only | grid | trees x depth, max_bin | "
        "AUC federated | AUC pooled xgboost | gap (AUC points) | rounds | ms/tree (sites + hub) "
        "| xgboost ms/tree | histogram KB/tree/site | largest level KB | sketch KB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        o = r["options"]
        levels = r["histogram_bytes_per_level"]
        lines.append(
            f"| {r['data']} | {r['rows']} | {r['sites']} | {'yes' if r['fixed_point'] else 'no'}"
            f" | {'yes' if r['left_only'] else 'no'} | {r['grid']}"
            f" | {o['n_trees']} x {o['max_depth']}, {o['max_bin']} | {r['auc_federated']:.4f} | "
            f"{r['auc_pooled_xgboost']:.4f} | {r['auc_gap_points']:+.2f} | {r['rounds']} | "
            f"{r['seconds_per_tree'] * 1e3:.0f} ({r['site_seconds_per_tree'] * 1e3:.0f} + "
            f"{r['hub_seconds_per_tree'] * 1e3:.0f}) | {r['xgboost_seconds_per_tree'] * 1e3:.1f}"
            f" | {r['histogram_bytes_per_tree_per_site'] / 1e3:.0f} | "
            f"{max(levels.values()) / 1e3:.0f} | {r['sketch_bytes_per_site'] / 1e3:.0f} |")
    lines += ["", "Gap: pooled minus federated AUC, in AUC points (target: at most 0.5).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="breast cancer only")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    data = datasets(args.quick)
    cancer = tree_options(max_bin=32)
    rows = [run("breast_cancer", data["breast_cancer"], cancer, 4, False, False),
            run("breast_cancer", data["breast_cancer"], cancer, 4, True, True, "moments")]
    if "synthetic_100k" in data:
        big = data["synthetic_100k"]
        deep = tree_options(n_trees=100, max_depth=6, learning_rate=0.1, max_bin=256)
        rows += [run("synthetic_100k", big, tree_options(), 4, False, False),
                 run("synthetic_100k", big, tree_options(), 8, True, True, "moments"),
                 run("synthetic_100k", big, deep, 4, False, False),
                 run("synthetic_100k", big, deep, 4, True, True)]
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "trees.json").write_text(json.dumps(rows, indent=1))
        (args.out / "trees.md").write_text(markdown(rows))
        print(f"wrote {args.out / 'trees.md'}")


if __name__ == "__main__":
    main()
