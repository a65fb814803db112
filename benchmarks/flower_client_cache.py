"""Per-process cache of a Flower client's data and model (imported inside Ray workers).

A Flower ClientApp is called once per message; re-reading the CSV and rebuilding the model every
round would penalise Flower unfairly, so each worker process keeps what it built.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import workloads as wl

_SITES: dict[tuple[str, int], object] = {}
_MODELS: dict[str, object] = {}


def site(index: int):
    workload = os.environ["FEDCARE_BENCH_WORKLOAD"]
    key = (workload, index)
    if key not in _SITES:
        data_dir = Path(os.environ["FEDCARE_BENCH_DATA_DIR"])
        stats = np.load(os.environ["FEDCARE_BENCH_STATS"])
        x, y = wl.read_site(wl.site_paths(workload, data_dir)[index])
        _SITES[key] = wl.SiteTrainer(wl.standardize(x, stats["mean"], stats["std"]), y)
    if workload not in _MODELS:
        n_features = int(np.load(os.environ["FEDCARE_BENCH_STATS"])["mean"].shape[0])
        _MODELS[workload] = wl.build_model(workload, n_features, wl.STUDY_SEED)
    return _SITES[key], _MODELS[workload]
