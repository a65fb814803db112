"""The ``fedcare`` command as a user runs it: real subprocesses, real files, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

FEDCARE = [sys.executable, "-m", "fedcare.cli.main"]


def run(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*FEDCARE, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env={"COLUMNS": "120", "PATH": "/usr/bin:/bin",
                                                "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_demo_runs_end_to_end_and_writes_a_report(tmp_path: Path) -> None:
    result = run("demo", "--out", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr
    assert "all sites" in result.stdout and "pooled" in result.stdout
    # FHIR, OMOP and CSV exports harmonized by the nodes to exactly the generator's truth
    assert "equal the generator's ground truth: yes" in " ".join(result.stdout.split())
    # The hub's and each node's signed audit log verify (fedcare audit verify).
    assert " ".join(result.stdout.split()).count("chain and signatures verify") == 4
    out = tmp_path / "demo"
    history = json.loads((out / "history.json").read_text())
    assert history["config"]["secure_aggregation"]["protocol"] == "secagg"
    assert set(history["baselines"]) == {"local", "centralized"}
    # Federated AUC within 2 points of the model trained on the pooled ground-truth table.
    fed = history["final"]["global_metrics"]["auc"]
    pooled = history["baselines"]["centralized"]["global_metrics"]["auc"]
    assert fed > 0.75 and fed >= pooled - 0.02, (fed, pooled)
    assert set(history["data_quality"]["reports"]) == {"hospital-1", "hospital-2", "hospital-3"}
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3
    # Key custody (audit F13): each hospital made its own key; after the whole run the
    # coordinator's folder (hub state included) holds only the CA's and the hub's keys.
    from tests.keyscan import find_secrets

    assert find_secrets(out / "federation") == {
        "ca/ca.key": "PEM private key", "hub/hub.key": "PEM private key",
        "hub/data/audit/hub-audit.key": "PEM private key"}  # the hub's audit key
    assert set(find_secrets(out / "site-kits")) == {f"hospital-{i}/site.key" for i in (1, 2, 3)}


STUDY = """
[study]
name = "cli"
rounds = 3
[data]
source = "synthetic"
sites = 2
rows_per_site = 50
n_features = 4
[baselines]
local = false
centralized = false
"""


def test_simulate_writes_outputs_and_resumes(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(STUDY)
    first = run("simulate", "s.toml", "--out", "o", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "o" / "model.safetensors").exists()
    again = run("simulate", "s.toml", "--out", "o", cwd=tmp_path)
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = run("simulate", "s.toml", "--out", "o", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr


def test_unknown_key_exits_2_names_the_key_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(STUDY.replace("rounds = 3", "rounds = 3\nrouns = 4"))
    result = run("simulate", "s.toml", "--out", "o", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown key 'study.rouns'" in result.stderr
    assert not (tmp_path / "o").exists()


def test_wrong_type_exits_2_with_the_value(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(STUDY.replace("rounds = 3", 'rounds = "three"'))
    result = run("simulate", "s.toml", cwd=tmp_path)
    assert result.returncode == 2 and "study.rounds" in result.stderr and "three" in result.stderr


def test_missing_site_file_names_site_and_path(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(
        '[data]\nsource = "files"\nlabel = "y"\n'
        '[[data.site]]\nname = "north"\npath = "north.csv"\n')
    result = run("simulate", "s.toml", "--out", "o", cwd=tmp_path)
    assert result.returncode == 2
    assert "north" in result.stderr and "north.csv" in result.stderr
    assert not (tmp_path / "o").exists()


def test_missing_config_file(tmp_path: Path) -> None:
    result = run("simulate", "nope.toml", cwd=tmp_path)
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_help_documents_every_key() -> None:
    from fedcare.config import describe_keys

    result = run("simulate", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for key, _, _ in describe_keys():
        assert key in text, key


def test_config_reference_prints_a_markdown_table() -> None:
    result = run("config-reference")
    assert result.returncode == 0 and result.stdout.startswith("| key | default | meaning |")
