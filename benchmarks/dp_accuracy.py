"""Accuracy under differential privacy on the breast-cancer task (4 sites, IID, logreg,
20 rounds), budget-first at epsilon = 1, 3, 8 (delta = 1e-5), next to the non-private run.

* DP-SGD: record-level, each site derives its noise from its own rows (Opacus, Poisson
  sampling, per-example clipping C = 1); epsilon is per site (the worst site is shown).
* DP-FedAvg (central noise): site-level - a whole hospital's contribution is protected -
  with 4 sites every round; clip 0.5 on each site's update.

Mean test accuracy / AUC over seeds (each site's held-out rows, example-weighted).

Run:  python benchmarks/dp_accuracy.py [--seeds 3] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import fedcare  # noqa: E402


def config(seed: int, privacy: dict | None) -> dict:
    cfg = {"study": {"name": "dp-acc", "seed": seed, "rounds": 20},
           "data": {"source": "builtin", "sites": 4, "partition": "iid"},
           "model": {"name": "logreg"}, "train": {"lr": 0.1, "batch_size": 32},
           "baselines": {"local": False, "centralized": False},
           "run": {"evaluate_every": 0, "workers": 1}}
    if privacy:
        cfg["privacy"] = privacy
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    variants: list[tuple[str, dict | None]] = [("non-private", None)]
    for eps in (8.0, 3.0, 1.0):
        variants.append((f"DP-SGD eps={eps:g}", {"mode": "dp_sgd", "clip": 1.0,
                                                 "target_epsilon": eps}))
    for eps in (8.0, 3.0, 1.0):
        variants.append((f"DP-FedAvg central eps={eps:g}",
                         {"mode": "dp_fedavg_central", "clip": 0.5, "target_epsilon": eps}))
    rows = []
    for name, privacy in variants:
        acc, auc, eps, secs = [], [], [], []
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            h = fedcare.simulate(config(seed, privacy), force=True)  # DP check: measured anyway
            secs.append(time.perf_counter() - t0)
            g = h.final["global_metrics"]
            acc.append(g["accuracy"])
            auc.append(g.get("auc", float("nan")))
            p = h.to_dict().get("privacy")
            eps.append(p["epsilon"] if p else None)
        rows.append({"variant": name, "accuracy": statistics.mean(acc),
                     "accuracy_sd": statistics.pstdev(acc), "auc": statistics.mean(auc),
                     "epsilon": eps[0], "seconds": statistics.mean(secs)})
        print(rows[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dp_accuracy.json").write_text(json.dumps(rows, indent=2))
    md = ["# Accuracy under differential privacy (breast cancer)", "",
          f"4 sites (IID), logistic regression, 20 rounds, budget-first, delta = 1e-5, mean of "
          f"{args.seeds} seeds.", "",
          "| variant | accuracy | sd | AUC | epsilon reached | seconds per run |",
          "|---|---|---|---|---|---|"]
    for r in rows:
        e = "-" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        md.append(f"| {r['variant']} | {r['accuracy']:.4f} | {r['accuracy_sd']:.4f} | "
                  f"{r['auc']:.4f} | {e} | {r['seconds']:.1f} |")
    (args.out / "dp_accuracy.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
