"""The benchmark workloads, re-implemented WITHOUT importing fedcare.

Shared by ``floor.py`` (system Python) and ``flower_run.py`` (the Flower venv), so both replicate
fedcare's procedure from the same code:

* data: per-site CSV files (columns f0..f{F-1}, label) written once by :func:`prepare`; every
  implementation - fedcare included, through its ``data.source = "files"`` adapter - reads the
  same files with ``pandas.read_csv`` and casts features float64 -> float32;
* standardization with the pooled mean/std of all training rows (float64, ddof=0, std 0 -> 1),
  cast to float32, applied as ``(x - mean) / std`` in float32;
* model init right after ``torch.manual_seed(study_seed)``;
* local training: SGD, one permutation per epoch from ``default_rng(site_round_seed)``,
  mini-batches of 32, mean BCEWithLogits loss;
* FedAvg: average weighted by training rows (the floor uses plain ``sum(w_i * p_i) / sum(w_i)``).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

STUDY_SEED = 0
N_SITES = 10
BATCH_SIZE = 32
B_FEATURES = 100
B_ROWS_PER_SITE = 2_000
B_HIDDEN = (1000, 900)  # 100*1000+1000 + 1000*900+900 + 900+1 = 1,002,801 parameters
B_DATA_SEED = 20240601
DEFAULT_DATA_DIR = Path(os.environ.get("FEDCARE_BENCH_DATA", "/tmp/fedcare-bench/data"))
CSV_FLOAT_FORMAT = "%.9g"  # 9 significant digits round-trip every float32 exactly


@dataclass(frozen=True)
class Workload:
    name: str
    rounds: int
    lr: float
    local_epochs: int = 1
    batch_size: int = BATCH_SIZE
    n_sites: int = N_SITES
    hidden: tuple[int, ...] = ()
    extra: dict = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        return "mlp" if self.hidden else "logreg"


WORKLOADS = {
    "A": Workload("A", rounds=50, lr=0.1),
    "B": Workload("B", rounds=10, lr=0.05, hidden=B_HIDDEN),
}


def override_rounds(workload: str, rounds: int) -> None:
    """Shorter runs for checks (``--rounds``); also seen by Flower's workers via the env."""
    import dataclasses

    WORKLOADS[workload] = dataclasses.replace(WORKLOADS[workload], rounds=rounds)
    os.environ[f"FEDCARE_BENCH_ROUNDS_{workload}"] = str(rounds)


def _apply_env_overrides() -> None:
    import dataclasses

    for name in list(WORKLOADS):
        r = os.environ.get(f"FEDCARE_BENCH_ROUNDS_{name}")
        if r:
            WORKLOADS[name] = dataclasses.replace(WORKLOADS[name], rounds=int(r))


_apply_env_overrides()


def site_round_seed(study_seed: int, round_: int, site_index: int) -> int:
    """Seed of one site's local training in one (1-based) round."""
    return int(np.random.SeedSequence([study_seed, round_, site_index])
               .generate_state(1, np.uint64)[0])


# --------------------------------------------------------------------------------------- data
def _full_dataset(workload: str) -> tuple[np.ndarray, np.ndarray]:
    if workload == "A":
        from sklearn.datasets import load_breast_cancer

        x, y = load_breast_cancer(return_X_y=True)
        return x.astype(np.float32), y.astype(np.int64)
    if workload == "B":
        rng = np.random.default_rng(B_DATA_SEED)
        n = N_SITES * B_ROWS_PER_SITE
        x = rng.standard_normal((n, B_FEATURES)).astype(np.float32)
        x *= rng.uniform(0.5, 3.0, B_FEATURES).astype(np.float32)       # uneven scales
        x += rng.normal(0.0, 2.0, B_FEATURES).astype(np.float32)        # and offsets
        w = rng.standard_normal(B_FEATURES)
        z = (x.astype(np.float64) - x.mean(0)) / x.std(0) @ w / np.sqrt(B_FEATURES)
        z += 0.5 * np.sin(3 * x[:, 0]) + rng.normal(0.0, 0.5, n)      # a little non-linearity
        y = (z > 0).astype(np.int64)
        return x, y
    raise ValueError(f"unknown workload {workload!r}")


def shard_indices(n_rows: int, n_sites: int, seed: int = STUDY_SEED) -> list[np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n_rows)
    return [np.sort(s) for s in np.array_split(perm, n_sites)]


def site_paths(workload: str, data_dir: Path = DEFAULT_DATA_DIR) -> list[Path]:
    return [Path(data_dir) / workload / f"site-{i}.csv" for i in range(WORKLOADS[workload].n_sites)]


def prepare(workload: str, data_dir: Path = DEFAULT_DATA_DIR) -> list[Path]:
    """Write the per-site CSVs once (idempotent; a marker records the content hash)."""
    import pandas as pd

    paths = site_paths(workload, data_dir)
    folder = paths[0].parent
    marker = folder / "DONE.json"
    x, y = _full_dataset(workload)
    digest = hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()
    if marker.is_file() and json.loads(marker.read_text()).get("sha256") == digest and \
            all(p.is_file() for p in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    cols = [f"f{j}" for j in range(x.shape[1])]
    for p, idx in zip(paths, shard_indices(len(y), len(paths)), strict=True):
        frame = pd.DataFrame(x[idx], columns=cols)
        frame["label"] = y[idx]
        frame.to_csv(p, index=False, float_format=CSV_FLOAT_FORMAT)
        back_x, back_y = read_site(p)
        if not (np.array_equal(back_x, x[idx]) and np.array_equal(back_y, y[idx])):
            raise RuntimeError(f"{p} does not round-trip exactly")
    marker.write_text(json.dumps({"sha256": digest, "rows": len(y),
                                  "features": int(x.shape[1])}))
    return paths


def ensure(workload: str, data_dir: Path = DEFAULT_DATA_DIR) -> list[Path]:
    """The runners' cheap check: write the CSVs only if they are missing.

    Unlike :func:`prepare` it does not regenerate the data to compare hashes, so a measured
    run imports neither scikit-learn nor the generator (``compare.py`` calls ``prepare``).
    """
    paths = site_paths(workload, data_dir)
    if (paths[0].parent / "DONE.json").is_file() and all(p.is_file() for p in paths):
        return paths
    return prepare(workload, data_dir)


def read_site(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One site's CSV as (float32 features, int64 labels) - the same way fedcare reads it."""
    import pandas as pd

    frame = pd.read_csv(path)
    names = [c for c in frame.columns if c != "label"]
    x = frame[names].to_numpy(dtype=np.float64).astype(np.float32)
    y = frame["label"].to_numpy().astype(np.int64)
    return np.ascontiguousarray(x), y


def pooled_standardizer(xs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (ddof=0) over every row of every site, in float64, returned as float32."""
    pooled = np.concatenate(xs).astype(np.float64)
    mean = pooled.mean(axis=0)
    std = pooled.std(axis=0)
    std[std == 0] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def standardize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((x - mean) / std).astype(np.float32)


def load_sites(workload: str, data_dir: Path = DEFAULT_DATA_DIR):
    """Read, standardize; returns [(x float32, y int64)] per site and (mean, std)."""
    raw = [read_site(p) for p in site_paths(workload, data_dir)]
    mean, std = pooled_standardizer([x for x, _ in raw])
    return [(standardize(x, mean, std), y) for x, y in raw], (mean, std)


# -------------------------------------------------------------------------------------- model
def build_model(workload: str, n_features: int, seed: int = STUDY_SEED):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    w = WORKLOADS[workload]
    if not w.hidden:
        return nn.Linear(n_features, 1)
    layers: list = []
    prev = n_features
    for h in w.hidden:
        layers += [nn.Linear(prev, h), nn.ReLU()]
        prev = h
    layers.append(nn.Linear(prev, 1))
    return nn.Sequential(*layers)


def get_weights(model) -> list[np.ndarray]:
    return [t.detach().numpy().copy() for t in model.state_dict().values()]


def set_weights(model, arrays) -> None:
    import torch

    keys = list(model.state_dict().keys())
    model.load_state_dict({k: torch.from_numpy(np.asarray(a)) for k, a in
                           zip(keys, arrays, strict=True)})


class SiteTrainer:
    """One site's local training, exactly as fedcare specifies it."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        import torch

        self.n = len(y)
        self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self.y = torch.from_numpy(y.astype(np.float32).reshape(-1, 1))

    def fit(self, model, global_weights, *, seed: int, lr: float, epochs: int = 1,
            batch_size: int = BATCH_SIZE) -> list[np.ndarray]:
        import torch
        from torch import nn

        set_weights(model, global_weights)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr)
        loss_fn = nn.BCEWithLogitsLoss()
        rng = np.random.default_rng(seed)
        for _ in range(epochs):
            perm = rng.permutation(self.n)
            for i in range(0, self.n, batch_size):
                idx = torch.from_numpy(perm[i:i + batch_size])
                loss = loss_fn(model(self.x[idx]), self.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        return get_weights(model)


def weighted_average(updates: list[list[np.ndarray]], weights: list[int]) -> list[np.ndarray]:
    """The floor's FedAvg: plain numpy ``sum(w_i * p_i) / sum(w_i)`` per array."""
    total = sum(weights)
    return [sum(w * u[j] for w, u in zip(weights, updates, strict=True)) / total
            for j in range(len(updates[0]))]


def weighted_average_stacked(updates: list[list[np.ndarray]],
                             weights: list[int]) -> list[np.ndarray]:
    """Same average, other float order: normalised float32 coefficients @ a (k, p) stack.

    Not the floor - a diagnostic: it shows how far a mere reordering of the float sums moves the
    final model, i.e. what "the same model to float tolerance" can mean for a workload.
    """
    w = np.asarray(weights, dtype=np.float64)
    coeffs = (w / w.sum()).astype(np.float32)
    out = []
    for j in range(len(updates[0])):
        stack = np.stack([u[j].reshape(-1) for u in updates])
        out.append((coeffs @ stack).reshape(updates[0][j].shape))
    return out


def save_model(path: Path, names: list[str], arrays: list[np.ndarray]) -> None:
    np.savez(path, **dict(zip(names, arrays, strict=True)))


def steady_median(seconds: list[float], skip: int = 2) -> float:
    tail = seconds[skip:] if len(seconds) > skip else seconds
    return float(statistics.median(tail))


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="write the per-site CSVs of a workload")
    ap.add_argument("--workload", choices=sorted(WORKLOADS), nargs="+", default=["A", "B"])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    a = ap.parse_args()
    for wl in a.workload:
        print(wl, [str(p) for p in prepare(wl, a.data_dir)][:1], "...")
