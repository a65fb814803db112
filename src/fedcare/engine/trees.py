"""What a finished tree study adds to its outputs (simulation and hub alike): the ensemble as
an ordinary XGBoost model file and each feature's importance in the history and report.

The sites binned standardized features; the XGBoost file takes raw values again (each split
threshold mapped back by the bundle's standardization, a monotone map, so every row takes the
same branch as in fedcare). A study that imputes or one-hot encodes takes the encoded columns
(as its :class:`~fedcare.engine.bundle.ModelBundle` does); a missing value then follows the
learned default direction instead of the federation's fill value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedcare.core.files import atomic_write
from fedcare.core.params import Parameters
from fedcare.engine.bundle import ModelBundle
from fedcare.trees import rounds

#: The XGBoost model file beside ``model.safetensors``.
XGBOOST_MODEL = "model.xgb.json"


@dataclass(frozen=True)
class TreeOutputs:
    model: bytes
    importance: dict[str, Any]


def is_tree_model(parameters: Parameters) -> bool:
    return all(k in parameters for k in (*rounds.SUMS, "phase", "hyper", "status", "cuts"))


def tree_outputs(bundle: ModelBundle) -> TreeOutputs | None:
    """The XGBoost model and the importance table of a tree bundle (None: not a tree model)."""
    p = bundle.parameters
    if not is_tree_model(p):
        return None
    ens = rounds.ensemble({k: np.asarray(v, dtype=np.float64) for k, v in p.items()})
    names = list(bundle.features) if len(bundle.features) == ens.n_features else [
        f"f{i}" for i in range(ens.n_features)]
    raw = rounds.raw_scale(ens, bundle.mean, bundle.std)
    gains = ens.feature_importance("total_gain")
    splits = ens.feature_importance("weight")
    cover = ens.feature_importance("total_cover")
    total = float(gains.sum())
    rows: list[dict[str, Any]] = [
        {"feature": name, "gain_share": float(gains[i]) / total if total > 0 else 0.0,
         "total_gain": float(gains[i]), "splits": int(splits[i]),
         "total_cover": float(cover[i])} for i, name in enumerate(names)]
    rows.sort(key=lambda r: -float(r["total_gain"]))
    return TreeOutputs(raw.to_xgboost_json(names),
                       {"kind": "xgboost total_gain / weight / total_cover",
                        "trees": ens.complete_trees(), "features": rows})


def write_tree_outputs(out: Path, bundle: ModelBundle, meta: dict[str, Any]) -> None:
    """Write ``model.xgb.json`` and put the importance in the history's ``meta`` (a tree
    model only; nothing happens for any other model)."""
    extra = tree_outputs(bundle)
    if extra is None:
        return
    atomic_write(Path(out) / XGBOOST_MODEL, extra.model)
    meta["feature_importance"] = extra.importance
