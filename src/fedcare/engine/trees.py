"""What a finished tree study adds to its outputs (simulation and hub alike): the ensemble as
an ordinary XGBoost model file and each feature's importance in the history and report.

The sites binned standardized features; the XGBoost file takes raw values again (each split
threshold mapped back by the bundle's standardization, a monotone map, so every row takes the
same branch as in fedcare). A study that imputes or one-hot encodes takes the encoded columns
(as its :class:`~fedcare.engine.bundle.ModelBundle` does); a missing value then follows the
learned default direction instead of the federation's fill value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedcare.core import gbt
from fedcare.core.files import atomic_write
from fedcare.core.params import Parameters
from fedcare.engine.bundle import ModelBundle

#: The XGBoost model file beside ``model.safetensors``.
XGBOOST_MODEL = "model.xgb.json"


@dataclass(frozen=True)
class TreeOutputs:
    model: dict[str, Any]
    importance: dict[str, Any]


def is_tree_model(parameters: Parameters) -> bool:
    return all(k in parameters for k in (*gbt.SUMS, "cursor", "status", "hyper"))


def tree_outputs(bundle: ModelBundle) -> TreeOutputs | None:
    """The XGBoost model and the importance table of a tree bundle (None: not a tree model)."""
    p = bundle.parameters
    if not is_tree_model(p):
        return None
    state = {k: np.asarray(v, dtype=np.float64) for k, v in p.items()}
    n_features = state["cuts"].shape[0]
    names = list(bundle.features) if len(bundle.features) == n_features else [
        f"f{i}" for i in range(n_features)]
    model = gbt.to_xgboost_json(
        state, mean=None if bundle.mean is None else bundle.mean.astype(np.float64),
        std=None if bundle.std is None else bundle.std.astype(np.float64), feature_names=names)
    imp = gbt.feature_importance(state)
    total = float(imp["total_gain"].sum())
    gains = imp["total_gain"]
    rows: list[dict[str, Any]] = [
        {"feature": name, "gain_share": float(gains[i]) / total if total > 0 else 0.0,
         "total_gain": float(gains[i]), "splits": int(imp["weight"][i]),
         "total_cover": float(imp["total_cover"][i])} for i, name in enumerate(names)]
    rows.sort(key=lambda r: -float(r["total_gain"]))
    return TreeOutputs(model, {"kind": "xgboost total_gain / weight / total_cover",
                               "trees": gbt.complete_trees(state), "features": rows})


def write_tree_outputs(out: Path, bundle: ModelBundle, meta: dict[str, Any]) -> None:
    """Write ``model.xgb.json`` and put the importance in the history's ``meta`` (a tree
    model only; nothing happens for any other model)."""
    extra = tree_outputs(bundle)
    if extra is None:
        return
    atomic_write(Path(out) / XGBOOST_MODEL, json.dumps(extra.model).encode())
    meta["feature_importance"] = extra.importance
