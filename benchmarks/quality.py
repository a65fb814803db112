"""Model quality: does federation reach what pooling all data would?

1. scikit-learn breast-cancer data over 4 sites with Dirichlet(0.5) label skew: FedAvg's mean
   per-site test accuracy next to the pooled (centralized) baseline's, over several seeds.
   Target: within 1 point.
2. BreastMNIST (../shared/data/breastmnist/breastmnist.npz) over 3 sites with the small CNN:
   test AUC of the federated model. Target: >= 0.85. Skipped when the file is absent.

Run:  python benchmarks/quality.py [--seeds 5] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import fedcare

HERE = Path(__file__).resolve().parent
BREASTMNIST = HERE.parent.parent / "shared" / "data" / "breastmnist" / "breastmnist.npz"


def breast_cancer(seed: int, model: str) -> dict[str, Any]:
    cfg = {
        "study": {"name": f"bc-{model}-{seed}", "seed": seed, "rounds": 40},
        "data": {"source": "builtin", "dataset": "breast_cancer", "sites": 4,
                 "partition": "dirichlet", "alpha": 0.5, "test_fraction": 0.25},
        "model": {"name": model, **({"hidden": [32]} if model == "mlp" else {})},
        "train": {"local_epochs": 1, "batch_size": 16, "lr": 0.05},
        "strategy": {"name": "fedavg"},
        "baselines": {"local": True, "centralized": True},
        "run": {"evaluate_every": 0},
    }
    h = fedcare.simulate(cfg)

    def mean_site(block: dict[str, Any]) -> float:
        return statistics.mean(m["accuracy"] for m in block["site_metrics"].values())

    return {"seed": seed, "model": model, "federated": mean_site(h.final),
            "pooled": mean_site(h.baselines["centralized"]),
            "local": mean_site(h.baselines["local"])}


def breastmnist(seed: int) -> dict[str, Any]:
    cfg = {
        "study": {"name": f"breastmnist-{seed}", "seed": seed, "rounds": 30},
        "data": {"source": "npz", "path": str(BREASTMNIST), "sites": 3, "partition": "iid"},
        "model": {"name": "cnn"},
        "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.001, "optimizer": "adam"},
        "strategy": {"name": "fedavg"},
        "baselines": {"local": False, "centralized": True},
        "run": {"evaluate_every": 5, "workers": 1, "threads_per_site": 2},
    }
    t = time.perf_counter()
    h = fedcare.simulate(cfg)
    return {"seed": seed, "auc": h.final["global_metrics"]["auc"],
            "accuracy": h.final["global_metrics"]["accuracy"],
            "pooled_auc": h.baselines["centralized"]["global_metrics"]["auc"],
            "site_auc": {s: m["auc"] for s, m in h.final["site_metrics"].items()},
            "seconds": time.perf_counter() - t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"breast_cancer": [], "breastmnist": []}
    for model in ("logreg", "mlp"):
        for seed in range(args.seeds):
            r = breast_cancer(seed, model)
            results["breast_cancer"].append(r)
            print(f"breast-cancer {model} seed {seed}: federated {r['federated']:.4f} "
                  f"pooled {r['pooled']:.4f} local {r['local']:.4f}", flush=True)
    if BREASTMNIST.exists():
        r = breastmnist(0)
        results["breastmnist"].append(r)
        print(f"breastmnist: AUC {r['auc']:.4f} (pooled {r['pooled_auc']:.4f})", flush=True)
    (args.out / "quality.json").write_text(json.dumps(results, indent=2))
    lines = ["# Quality", "",
             "Breast cancer, 4 sites, Dirichlet alpha = 0.5, 40 rounds, mean per-site test "
             "accuracy (target: federated within 1 point of pooled):", "",
             "| model | seeds | federated | pooled | local-only | federated - pooled (points) |",
             "|---|---|---|---|---|---|"]
    for model in ("logreg", "mlp"):
        rs = [r for r in results["breast_cancer"] if r["model"] == model]
        f, p, lo = (statistics.mean(r[k] for r in rs) for k in ("federated", "pooled", "local"))
        lines.append(f"| {model} | {len(rs)} | {f:.4f} | {p:.4f} | {lo:.4f} | "
                     f"{100 * (f - p):+.2f} |")
    if results["breastmnist"]:
        r = results["breastmnist"][0]
        lines += ["", "BreastMNIST, 3 sites (IID), small CNN, 30 rounds (target AUC >= 0.85):", "",
                  "| test AUC (federated) | accuracy | pooled AUC | per-site AUC | seconds |",
                  "|---|---|---|---|---|",
                  f"| {r['auc']:.4f} | {r['accuracy']:.4f} | {r['pooled_auc']:.4f} | "
                  + ", ".join(f"{s} {v:.3f}" for s, v in r["site_auc"].items())
                  + f" | {r['seconds']:.0f} |"]
    (args.out / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
