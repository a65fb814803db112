"""``fedcare predict`` and ``fedcare model export`` as a user runs them: a real study's model
applied to a CSV of new patients, bad input refused with exit 2 (issue 14, item 6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedcare.data.builtin import load_breast_cancer

FEDCARE = [sys.executable, "-m", "fedcare.cli.main"]

STUDY = """
[study]
name = "bc"
rounds = 3
[data]
source = "builtin"
sites = 3
[model]
name = "mlp"
hidden = [8]
[baselines]
local = false
centralized = false
"""


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    if "PYTHONPATH" in os.environ:  # the code under test, in its subprocesses too
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return subprocess.run([*FEDCARE, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env=env)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("cli-model")
    (work / "study.toml").write_text(STUDY)
    result = run("simulate", "study.toml", "--out", "run", cwd=work)
    assert result.returncode == 0, result.stderr
    t = load_breast_cancer()
    frame = pd.DataFrame(t.x, columns=list(t.feature_names))
    frame.insert(0, "patient_id", [f"p{i}" for i in range(len(frame))])
    frame.to_csv(work / "patients.csv", index=False)
    return work


def test_predict_writes_probabilities_and_classes_beside_the_id(workdir: Path) -> None:
    result = run("predict", "run", "patients.csv", "--out", "pred.csv", "--id", "patient_id",
                 cwd=workdir)

    assert result.returncode == 0, result.stderr
    pred = pd.read_csv(workdir / "pred.csv")
    assert list(pred.columns) == ["patient_id", "probability_0", "probability_1", "prediction"]
    assert pred["patient_id"].iloc[0] == "p0" and len(pred) == 569
    np.testing.assert_allclose(pred["probability_0"] + pred["probability_1"], 1, atol=1e-9)
    assert (pred["prediction"] == load_breast_cancer().y).mean() > 0.85


def test_the_onnx_export_predicts_what_fedcare_predicts(workdir: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    assert run("predict", "run/model.safetensors", "patients.csv", "--out", "p.csv",
               cwd=workdir).returncode == 0

    result = run("model", "export", "run", "--format", "onnx", "--out", "model.onnx",
                 cwd=workdir)

    assert result.returncode == 0, result.stderr
    features = pd.read_csv(workdir / "patients.csv").drop(columns=["patient_id"])
    got = ort.InferenceSession(str(workdir / "model.onnx")).run(
        None, {"features": features.to_numpy(np.float32)})[0]
    expected = pd.read_csv(workdir / "p.csv")[["probability_0", "probability_1"]].to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_model_show_prints_the_header(workdir: Path) -> None:
    result = run("model", "show", "run", cwd=workdir)

    assert result.returncode == 0, result.stderr
    header = json.loads(result.stdout)
    assert header["format"] == "fedcare-model" and header["task"] == "binary"
    assert header["features"][0] == "mean radius" and header["label"]["positive"] == 1
    assert len(header["study"]["content_hash"]) == 64


def test_a_csv_missing_a_feature_column_exits_2(workdir: Path) -> None:
    pd.read_csv(workdir / "patients.csv").drop(columns=["worst area"]).to_csv(
        workdir / "short.csv", index=False)

    result = run("predict", "run", "short.csv", "--out", "x.csv", cwd=workdir)

    assert result.returncode == 2
    assert "lacks feature column(s) ['worst area']" in result.stderr
    assert not (workdir / "x.csv").exists()


def test_a_non_numeric_value_exits_2(workdir: Path) -> None:
    frame = pd.read_csv(workdir / "patients.csv")
    frame["mean texture"] = frame["mean texture"].astype(object)
    frame.loc[10, "mean texture"] = "high"
    frame.to_csv(workdir / "text.csv", index=False)

    result = run("predict", "run", "text.csv", "--out", "x.csv", cwd=workdir)

    assert result.returncode == 2
    assert "['mean texture']" in result.stderr and "not numeric" in result.stderr


def test_a_bundle_from_a_newer_fedcare_exits_2(workdir: Path) -> None:
    from fedcare.core.wire import save_parameters
    from fedcare.engine.bundle import METADATA_KEY, read_bundle

    bundle = read_bundle(workdir / "run")
    header = {**bundle.header(), "format_version": 2, "fedcare_version": "9.0"}
    (workdir / "newer.safetensors").write_bytes(save_parameters(
        bundle.parameters, metadata={METADATA_KEY: json.dumps(header)}))

    for args in (("predict", "newer.safetensors", "patients.csv", "--out", "x.csv"),
                 ("model", "export", "newer.safetensors", "--out", "x.onnx")):
        result = run(*args, cwd=workdir)
        assert result.returncode == 2, result.stderr
        assert "format version 2, newer than this fedcare reads (1)" in result.stderr


def test_a_missing_model_exits_2(workdir: Path) -> None:
    result = run("predict", "nowhere", "patients.csv", "--out", "x.csv", cwd=workdir)
    assert result.returncode == 2 and "cannot read model" in result.stderr
