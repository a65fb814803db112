"""``fedcare simulate`` of a study that ships its own module (examples/custom_model): the same
learner and sandbox as at a site, a report and a saved model that ``fedcare predict`` applies
(through the sandbox again); a hostile module ends the run with a clear error, not a
traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fedcare
from tests.sandbox import skip_unless_sandbox

EXAMPLE = Path(__file__).parents[2] / "examples" / "custom_model"
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the sandbox uses Linux namespaces and Landlock")


@pytest.fixture(autouse=True, scope="module")
def _sandbox_available() -> None:
    skip_unless_sandbox()


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    src = str(Path(fedcare.__file__).parents[1])  # the fedcare under test
    return subprocess.run([sys.executable, "-m", "fedcare.cli.main", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={"COLUMNS": "120", "PATH": "/usr/bin:/bin",
                               "OMP_NUM_THREADS": "1", "PYTHONPATH": src})


def _example(tmp_path: Path, rounds: int = 3) -> Path:
    folder = tmp_path / "study"
    shutil.copytree(EXAMPLE, folder)
    toml = folder / "study.toml"
    text = toml.read_text().replace("rounds = 10", f"rounds = {rounds}")
    toml.write_text(text.replace("local = true", "local = false")
                    .replace("centralized = true", "centralized = false"))
    return folder


def test_the_example_simulates_reports_and_predicts_through_the_sandbox(tmp_path: Path) -> None:
    folder = _example(tmp_path)
    done = _run("simulate", "study.toml", "--out", "out", cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    out = folder / "out"
    assert {"report.html", "history.json", "model.safetensors", "audit.jsonl"} <= {
        p.name for p in out.iterdir()}
    history = json.loads((out / "history.json").read_text())
    accuracy = [m["accuracy"] for m in history["final"]["site_metrics"].values()]
    assert min(accuracy) > 0.85, accuracy
    # The saved model carries the module; predictions run it in the sandbox again.
    rows = tmp_path / "patients.csv"
    from sklearn.datasets import load_breast_cancer

    load_breast_cancer(as_frame=True).frame.drop(columns=["target"]).head(30).to_csv(
        rows, index=False)
    predicted = _run("predict", "out", str(rows), "--out", "pred.csv", cwd=folder)
    assert predicted.returncode == 0, predicted.stdout + predicted.stderr
    lines = (folder / "pred.csv").read_text().splitlines()
    assert lines[0].startswith("probability_0,probability_1,prediction") and len(lines) == 31


def test_a_hostile_module_ends_the_simulation_with_its_sandbox_status(tmp_path: Path) -> None:
    folder = _example(tmp_path, rounds=1)
    good = (folder / "model.py").read_text()
    (folder / "model.py").write_text(good.replace("def fit(inputs):\n",
                                                  "def fit(inputs):\n    while True:\n"
                                                  "        pass\n"))
    toml = folder / "study.toml"
    toml.write_text(toml.read_text().replace("cpu_seconds = 20", "cpu_seconds = 1"))
    done = _run("simulate", "study.toml", "--out", "out", cwd=folder)
    assert done.returncode != 0
    text = done.stdout + done.stderr
    assert "status cpu_limit" in text and "Traceback" not in text, text


def test_fedprox_secure_aggregation_and_site_dp_run_on_the_modules_weights() -> None:
    """The update filters and secure aggregation see plain float weights: they run unchanged."""
    cfg = {"study": {"name": "custom-secure", "seed": 1, "rounds": 2},
           "data": {"source": "synthetic", "sites": 3, "rows_per_site": 80, "n_features": 6,
                    "standardize": False},
           "model": {"name": "custom", "source": (EXAMPLE / "model.py").read_text(),
                     "params": 7, "cpu_seconds": 10, "wall_seconds": 30, "memory_mb": 1024},
           "train": {"local_epochs": 1, "batch_size": 16, "lr": 0.1},
           "strategy": {"name": "fedprox", "mu": 0.1},
           "secure_aggregation": {"protocol": "secagg"},
           "privacy": {"mode": "dp_fedavg_distributed", "noise_multiplier": 0.5, "clip": 5.0},
           "baselines": {"local": False, "centralized": False}, "run": {"workers": 1}}
    history = fedcare.simulate(cfg)
    assert [r.round for r in history.rounds] == [1, 2]
    assert all(sorted(r.sites_completed) == ["site-1", "site-2", "site-3"]
               for r in history.rounds)
    epsilon = history.rounds[-1].epsilon
    assert isinstance(epsilon, float) and 0 < epsilon < float("inf")
