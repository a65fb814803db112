"""Model quality: does federation reach what pooling all data would, with the documented configs?

1. examples/breast_cancer.toml (scikit-learn breast cancer, 4 sites, Dirichlet(0.5) label skew,
   the MLP) over several seeds: mean per-site test accuracy of the federated model next to the
   pooled (centralized) and local-only baselines of the same run. Target: federated within 1
   point of pooled (mean over 5 seeds). The same study with logistic regression for reference.
2. examples/breastmnist.toml (BreastMNIST, 3 sites, the official test split spread over the
   sites) over 3 seeds: test AUC (example-weighted mean of the sites' AUCs, the study's
   ``global_metrics``) of the federated model and of the pooled and local-only baselines, and
   the wall-clock seconds of each phase. Target: federated AUC >= 0.90 (mean over the seeds),
   whole run within 10 minutes. Skipped when the .npz is absent.

Run:  python benchmarks/quality.py [--seeds 5] [--image-seeds 3] [--jobs 3]
          [--breastmnist PATH] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples"
#: Where the example's relative path points from a checkout beside shared/.
BREASTMNIST = EXAMPLES.parent.parent / "shared" / "data" / "breastmnist" / "breastmnist.npz"


def _example(name: str, seed: int) -> dict[str, Any]:
    cfg = tomllib.loads((EXAMPLES / name).read_text())
    cfg["study"]["seed"] = seed
    cfg["study"]["name"] = f"{cfg['study']['name']}-{seed}"
    return cfg


def _timed(cfg: dict[str, Any]) -> tuple[Any, dict[str, float]]:
    """Run the study; seconds of the federated rounds, the local-only and pooled baselines
    (from the progress callbacks: they arrive in that order)."""
    import fedcare

    marks: dict[str, float] = {}
    start = time.perf_counter()

    def progress(phase: str, done: int, total: int, record: Any) -> None:
        marks[phase] = time.perf_counter()

    h = fedcare.simulate(cfg, progress=progress)
    end = time.perf_counter()
    fed_end = marks.get("federated", end)
    local_end = marks.get("local", fed_end)
    return h, {"federated": fed_end - start, "local": local_end - fed_end,
               "pooled": marks.get("centralized", local_end) - local_end, "total": end - start}


def breast_cancer(seed: int, model: str) -> dict[str, Any]:
    cfg = _example("breast_cancer.toml", seed)
    if model != "mlp":
        cfg["model"] = {"name": model}
    h, seconds = _timed(cfg)

    def mean_site(block: dict[str, Any]) -> float:
        return statistics.mean(m["accuracy"] for m in block["site_metrics"].values())

    return {"seed": seed, "model": model, "federated": mean_site(h.final),
            "pooled": mean_site(h.baselines["centralized"]),
            "local": mean_site(h.baselines["local"]), "seconds": seconds["total"]}


def breastmnist(seed: int, path: str) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)  # one core per seed: --jobs seeds run side by side
    cfg = _example("breastmnist.toml", seed)
    cfg["data"]["path"] = path
    h, seconds = _timed(cfg)
    return {"seed": seed, "auc": h.final["global_metrics"]["auc"],
            "accuracy": h.final["global_metrics"]["accuracy"],
            "pooled_auc": h.baselines["centralized"]["global_metrics"]["auc"],
            "local_auc": h.baselines["local"]["global_metrics"]["auc"],
            "site_auc": {s: m["auc"] for s, m in h.final["site_metrics"].items()},
            "seconds": seconds, "load_after": os.getloadavg()[0]}


def _spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def report(results: dict[str, Any], load: tuple[float, float]) -> list[str]:
    lines = ["# Quality", "",
             "Breast cancer (examples/breast_cancer.toml: 4 sites, Dirichlet alpha = 0.5), "
             "mean per-site test accuracy, mean ± sd over seeds (target: federated within 1 "
             "point of pooled with the MLP):", "",
             "| model | seeds | federated | pooled | local-only | federated - pooled (points) |",
             "|---|---|---|---|---|---|"]
    for model in ("mlp", "logreg"):
        rs = [r for r in results["breast_cancer"] if r["model"] == model]
        if not rs:
            continue
        gap = [100 * (r["federated"] - r["pooled"]) for r in rs]
        lines.append(f"| {model} | {len(rs)} | {_spread([r['federated'] for r in rs])} | "
                     f"{_spread([r['pooled'] for r in rs])} | "
                     f"{_spread([r['local'] for r in rs])} | "
                     f"{statistics.mean(gap):+.2f} (per seed "
                     f"{', '.join(f'{g:+.2f}' for g in gap)}) |")
    rs = results["breastmnist"]
    if rs:
        lines += ["", "BreastMNIST (examples/breastmnist.toml: 3 IID sites, the official test "
                  "split spread over them), test AUC = example-weighted mean of the sites' AUCs "
                  "(target: federated >= 0.90, mean over seeds; the whole run within 10 "
                  f"minutes). Load average (1 min) {load[0]:.1f} before, {load[1]:.1f} after, "
                  f"on {os.cpu_count()} cores; seeds ran side by side, one torch thread each:",
                  "",
                  "| seed | federated AUC | accuracy | pooled AUC | local-only AUC | seconds: "
                  "federated / local / pooled / total |", "|---|---|---|---|---|---|"]
        for r in rs:
            s = r["seconds"]
            lines.append(f"| {r['seed']} | {r['auc']:.4f} | {r['accuracy']:.4f} | "
                         f"{r['pooled_auc']:.4f} | {r['local_auc']:.4f} | {s['federated']:.0f}"
                         f" / {s['local']:.0f} / {s['pooled']:.0f} / {s['total']:.0f} |")
        lines.append(f"| mean ± sd | {_spread([r['auc'] for r in rs])} | "
                     f"{_spread([r['accuracy'] for r in rs])} | "
                     f"{_spread([r['pooled_auc'] for r in rs])} | "
                     f"{_spread([r['local_auc'] for r in rs])} | "
                     f"{statistics.mean(r['seconds']['total'] for r in rs):.0f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5, help="breast-cancer seeds")
    ap.add_argument("--image-seeds", type=int, default=3, help="BreastMNIST seeds")
    ap.add_argument("--jobs", type=int, default=3, help="BreastMNIST seeds run side by side")
    ap.add_argument("--breastmnist", type=Path, default=BREASTMNIST)
    ap.add_argument("--skip", choices=("breast_cancer", "breastmnist"), action="append",
                    default=[])
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"breast_cancer": [], "breastmnist": []}
    load_before = os.getloadavg()[0]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        images = []
        if "breastmnist" not in args.skip and args.breastmnist.exists():
            images = [pool.submit(breastmnist, seed, str(args.breastmnist))
                      for seed in range(args.image_seeds)]
        if "breast_cancer" not in args.skip:
            for model in ("mlp", "logreg"):
                for seed in range(args.seeds):
                    r = breast_cancer(seed, model)
                    results["breast_cancer"].append(r)
                    print(f"breast-cancer {model} seed {seed}: federated {r['federated']:.4f} "
                          f"pooled {r['pooled']:.4f} local {r['local']:.4f}", flush=True)
        for future in images:
            r = future.result()
            results["breastmnist"].append(r)
            print(f"breastmnist seed {r['seed']}: AUC {r['auc']:.4f} (pooled "
                  f"{r['pooled_auc']:.4f}, local {r['local_auc']:.4f}) in "
                  f"{r['seconds']['total']:.0f} s", flush=True)
    lines = report(results, (load_before, os.getloadavg()[0]))
    (args.out / "quality.json").write_text(json.dumps(results, indent=2))
    (args.out / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
