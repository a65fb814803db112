"""Whole simulation runs through the public API: outputs, resume, strategies, workers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file

import fedcare
from fedcare.core import ConfigError, DataError


def _cfg(**over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "study": {"name": "t", "seed": 1, "rounds": 4},
        "data": {"source": "synthetic", "sites": 3, "rows_per_site": 60, "n_features": 6},
        "model": {"name": "logreg"},
        "train": {"local_epochs": 1, "batch_size": 16, "lr": 0.1},
        "baselines": {"local": False, "centralized": False},
        "run": {"workers": 1},
    }
    for key, value in over.items():
        merge = isinstance(value, dict) and key != "data"  # a data source replaces the other
        cfg[key] = {**cfg.get(key, {}), **value} if merge else value
    return cfg


class Stop(Exception):
    pass


def test_output_folder_has_every_artifact_and_no_temporary_files(tmp_path: Path) -> None:
    out = tmp_path / "run"
    h = fedcare.simulate(_cfg(baselines={"local": True, "centralized": True}), output_dir=out)
    names = {p.name for p in out.iterdir()}
    assert {"history.json", "model.safetensors", "checkpoints", "report.html",
            "config.json"} <= names
    assert not list(out.rglob("*.tmp"))
    assert len(list((out / "checkpoints").iterdir())) == 4
    saved = json.loads((out / "history.json").read_text())
    assert len(saved["rounds"]) == 4 and saved["baselines"]["local"]["site_metrics"]
    assert set(saved["final"]["site_metrics"]) == {"site-1", "site-2", "site-3"}
    for r in saved["rounds"]:
        assert r["bytes_down"] > 0 and r["bytes_up"] > 0 and r["seconds"] > 0
    model = load_file(str(out / "model.safetensors"))
    assert h.final_parameters is not None
    for k, v in h.final_parameters.items():
        np.testing.assert_array_equal(model[k], v)


@pytest.mark.parametrize("strategy", [
    {"name": "fedavg"}, {"name": "fedprox", "mu": 0.1}, {"name": "fedadam", "server_lr": 0.05},
    {"name": "fedyogi", "server_lr": 0.05}, {"name": "fedadagrad", "server_lr": 0.05},
    {"name": "scaffold"},
])
def test_resumed_run_equals_an_uninterrupted_one(tmp_path: Path, strategy: dict) -> None:
    cfg = _cfg(strategy=strategy, study={"rounds": 5})
    full = fedcare.simulate(cfg, output_dir=tmp_path / "full")

    def stop_after_3(phase: str, done: int, total: int, record: object) -> None:
        if phase == "federated" and done == 3:
            raise Stop

    with pytest.raises(Stop):
        fedcare.simulate(cfg, output_dir=tmp_path / "cut", progress=stop_after_3)
    assert not (tmp_path / "cut" / "history.json").exists()
    resumed = fedcare.simulate(cfg, output_dir=tmp_path / "cut", resume=True)
    assert resumed.meta["resumed_from_round"] == 3
    assert [r.round for r in resumed.rounds] == [1, 2, 3, 4, 5]
    assert full.final_parameters is not None and resumed.final_parameters is not None
    for k in full.final_parameters:
        np.testing.assert_allclose(resumed.final_parameters[k], full.final_parameters[k],
                                   rtol=1e-6, atol=1e-7)


def test_resume_refuses_a_changed_config(tmp_path: Path) -> None:
    fedcare.simulate(_cfg(), output_dir=tmp_path)
    with pytest.raises(ConfigError, match="configuration changed"):
        fedcare.simulate(_cfg(train={"lr": 0.2}), output_dir=tmp_path, resume=True)


def test_existing_run_is_not_overwritten_by_accident(tmp_path: Path) -> None:
    fedcare.simulate(_cfg(), output_dir=tmp_path)
    with pytest.raises(ConfigError, match="--resume"):
        fedcare.simulate(_cfg(), output_dir=tmp_path)
    fedcare.simulate(_cfg(), output_dir=tmp_path, overwrite=True)


def test_parallel_workers_give_the_same_model_as_one_process() -> None:
    one = fedcare.simulate(_cfg(strategy={"name": "scaffold"}))
    two = fedcare.simulate(_cfg(strategy={"name": "scaffold"}, run={"workers": 2}))
    assert two.meta["workers"] == 2
    assert one.final_parameters is not None and two.final_parameters is not None
    for k in one.final_parameters:
        np.testing.assert_allclose(one.final_parameters[k], two.final_parameters[k],
                                   rtol=1e-6, atol=1e-7)


def test_same_seed_same_model_other_seed_other_model() -> None:
    a = fedcare.simulate(_cfg()).final_parameters
    b = fedcare.simulate(_cfg()).final_parameters
    c = fedcare.simulate(_cfg(study={"seed": 2})).final_parameters
    assert a is not None and b is not None and c is not None
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def _write_sites(tmp_path: Path, frames: dict[str, pd.DataFrame]) -> list[dict[str, str]]:
    sites = []
    for name, frame in frames.items():
        path = tmp_path / f"{name}.csv"
        frame.to_csv(path, index=False)
        sites.append({"name": name, "path": str(path)})
    return sites


def _frame(n: int, seed: int, cols: tuple[str, ...] = ("a", "b", "c")) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(cols)))
    frame = pd.DataFrame(x, columns=list(cols))
    frame["outcome"] = (x[:, 0] > 0).astype(int)
    return frame


def test_per_site_csv_and_parquet_files(tmp_path: Path) -> None:
    sites = _write_sites(tmp_path, {"h1": _frame(50, 1), "h2": _frame(40, 2)})
    _frame(30, 3).to_parquet(tmp_path / "h3.parquet")
    sites.append({"name": "h3", "path": str(tmp_path / "h3.parquet")})
    h = fedcare.simulate(_cfg(data={"source": "files", "label": "outcome", "site": sites}))
    assert [s["name"] for s in h.sites] == ["h1", "h2", "h3"]
    assert h.final["global_metrics"]["accuracy"] > 0.8


def test_label_missing_at_one_site_names_that_site(tmp_path: Path) -> None:
    sites = _write_sites(tmp_path, {"h1": _frame(50, 1),
                                    "h2": _frame(40, 2).rename(columns={"outcome": "label"})})
    with pytest.raises(DataError) as info:
        fedcare.simulate(_cfg(data={"source": "files", "label": "outcome", "site": sites}),
                         output_dir=tmp_path / "out")
    assert info.value.site == "h2" and "outcome" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_features_that_differ_between_sites_are_named(tmp_path: Path) -> None:
    sites = _write_sites(tmp_path, {"h1": _frame(50, 1),
                                    "h2": _frame(40, 2, cols=("a", "b", "d"))})
    with pytest.raises(DataError, match="h2"):
        fedcare.simulate(_cfg(data={"source": "files", "label": "outcome", "site": sites}))


def test_site_with_zero_rows_is_named(tmp_path: Path) -> None:
    sites = _write_sites(tmp_path, {"h1": _frame(50, 1), "empty": _frame(0, 2)})
    with pytest.raises(DataError) as info:
        fedcare.simulate(_cfg(data={"source": "files", "label": "outcome", "site": sites}))
    assert info.value.site == "empty"


def test_npz_images_with_the_cnn(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)

    def images(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, size=(n, 1))
        x = rng.integers(0, 60, size=(n, 12, 12)).astype(np.uint8)
        x[y[:, 0] == 1, 3:9, 3:9] += 150  # a bright square marks the positive class
        return x, y

    (xtr, ytr), (xte, yte) = images(120), images(60)
    np.savez(tmp_path / "img.npz", train_images=xtr, train_labels=ytr, test_images=xte,
             test_labels=yte)
    h = fedcare.simulate(_cfg(data={"source": "npz", "path": str(tmp_path / "img.npz"),
                                    "sites": 3},
                              model={"name": "cnn"}, study={"rounds": 6},
                              train={"lr": 0.01, "optimizer": "adam", "batch_size": 16}))
    assert h.final["global_metrics"]["auc"] > 0.9
