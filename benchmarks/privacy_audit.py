"""Membership inference on the breast-cancer task, with and without DP-SGD.

    python benchmarks/privacy_audit.py                       # every variant below
    python benchmarks/privacy_audit.py --variants no-dp      # the non-private run only
    python benchmarks/privacy_audit.py --shadows 16

For each variant: train the study with ``fedcare.simulate`` (the variant differs from the
base study ONLY in its ``[privacy]`` section), then audit the final model with the loss
attack (Yeom et al. 2018) and online LiRA (Carlini et al. 2022) over every site's rows:
members = training rows, non-members = held-out rows (test_fraction 0.5, so the two groups
are the same size). Writes benchmarks/results/privacy_audit.md and .json.

A new variant is one entry in VARIANTS (a ``[privacy]`` table for the study file).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import fedcare
from fedcare.attacks.membership import AuditSettings, audit_run
from fedcare.attacks.membership.figure import describe_privacy

RESULTS = Path(__file__).parent / "results"

#: The base study: a small MLP that fits its training rows (breast cancer, 569 rows).
BASE: dict[str, Any] = {
    "study": {"name": "bc-audit", "seed": 0, "rounds": 30},
    "data": {"source": "builtin", "dataset": "breast_cancer", "sites": 4, "partition": "iid",
             "test_fraction": 0.5},
    "model": {"name": "mlp", "hidden": [64]},
    "train": {"local_epochs": 2, "batch_size": 16, "lr": 0.05},
    "strategy": {"name": "fedavg"},
    "baselines": {"local": False, "centralized": False},
    "run": {"checkpoint_every": 0, "workers": 1},
}

#: name -> the study's [privacy] section (None: no DP).
VARIANTS: dict[str, dict[str, Any] | None] = {
    "no-dp": None,
    "dp-sgd": {"mode": "dp_sgd", "clip": 1.0, "target_epsilon": 3.0, "delta": 1e-5},
}


def published_ranges() -> dict[str, list[float]]:
    """Each breast-cancer feature's [min, max] over the whole public dataset (sklearn's DESCR
    publishes them), widened by 10 %: ``data.stats_clip`` for the DP variants, which
    standardize with noised feature statistics (bounded by these ranges)."""
    from fedcare.data.builtin import load_breast_cancer

    t = load_breast_cancer()
    lo, hi = t.x.min(0).astype(float), t.x.max(0).astype(float)
    pad = 0.1 * (hi - lo)
    return {n: [float(a - p), float(b + p)] for n, a, b, p in zip(t.feature_names, lo, hi, pad,
                                                                  strict=True)}


def study(privacy: dict[str, Any] | None) -> dict[str, Any]:
    cfg = json.loads(json.dumps(BASE))
    if privacy is not None:
        cfg["privacy"] = privacy
        cfg["data"]["stats_clip"] = published_ranges()
    return cfg


def run_variant(name: str, work: Path, shadows: int) -> dict[str, Any]:
    out = work / name
    t = time.perf_counter()
    history = fedcare.simulate(study(VARIANTS[name]), output_dir=out, overwrite=True)
    train_s = time.perf_counter() - t
    row: dict[str, Any] = {"variant": name, "train_seconds": train_s,
                           "test_metrics": history.final.get("global_metrics", {})}
    for attack in ("loss", "lira"):
        t = time.perf_counter()
        res = audit_run(out, AuditSettings(attack=attack, shadows=shadows))
        row[attack] = {"auc": res.auc, "tpr_at_fpr": res.tpr_at_fpr,
                       "seconds": time.perf_counter() - t, "members": res.members,
                       "non_members": res.non_members}
        row["privacy"] = res.privacy
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--shadows", type=int, default=8)
    ap.add_argument("--work", type=Path, default=None, help="keep run folders here")
    ap.add_argument("--out", type=Path, default=RESULTS / "privacy_audit.md")
    args = ap.parse_args()
    names = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        rows = [run_variant(n, work, args.shadows) for n in names]
    stamp = time.strftime("%Y-%m-%d %H:%M")
    lines = [f"# Membership inference, breast cancer ({stamp}, Python {platform.python_version()})",
             "", f"4 sites (iid), MLP [64], 30 rounds x 2 local epochs, FedAvg; members = "
             f"{rows[0]['loss']['members']} training rows, non-members = "
             f"{rows[0]['loss']['non_members']} held-out rows; LiRA online with "
             f"{args.shadows} shadow models.", "",
             "| variant | study privacy | test accuracy | loss AUC | loss TPR@1% | LiRA AUC | "
             "LiRA TPR@1% | LiRA TPR@0.1% | train s | LiRA s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = r["test_metrics"].get("accuracy", float("nan"))
        lines.append(
            f"| {r['variant']} | {describe_privacy(r['privacy'])} | {acc:.3f} | "
            f"{r['loss']['auc']:.3f} | {r['loss']['tpr_at_fpr']['0.01']:.3f} | "
            f"{r['lira']['auc']:.3f} | {r['lira']['tpr_at_fpr']['0.01']:.3f} | "
            f"{r['lira']['tpr_at_fpr']['0.001']:.3f} | {r['train_seconds']:.1f} | "
            f"{r['lira']['seconds']:.1f} |")
    lines += ["", f"With {rows[0]['loss']['non_members']} non-members the smallest non-zero "
              f"FPR is {1 / rows[0]['loss']['non_members']:.2%}: TPR@0.1% is the TPR at zero "
              "false positives."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2, default=str))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
