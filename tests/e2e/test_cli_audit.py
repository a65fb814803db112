"""``fedcare audit verify`` / ``export`` on a simulation's audit log, as a researcher runs
them: real subprocesses, exit codes, the first bad entry named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.e2e.test_cli import STUDY

SRC = str(Path(__file__).resolve().parents[2] / "src")  # this checkout's fedcare


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedcare.cli.main", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={"COLUMNS": "120", "PATH": "/usr/bin:/bin", "PYTHONPATH": SRC,
                               "OMP_NUM_THREADS": "1"})


def test_a_simulations_audit_log_verifies_exports_and_tampering_is_named(
        tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(STUDY)
    assert run("simulate", "s.toml", "--out", "o", cwd=tmp_path).returncode == 0
    out = tmp_path / "o"
    assert (out / "audit-key.pem").stat().st_mode & 0o077 == 0
    ok = run("audit", "verify", "--run", "o", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    said = " ".join(ok.stdout.split())
    assert "OK" in said and "6 entries" in said and "not identity" in said
    kinds = [json.loads(line)["kind"] for line in (out / "audit.jsonl").read_text().splitlines()]
    assert kinds == ["study_submitted", "aggregated", "aggregated", "aggregated",
                     "model_released", "study_ended"]
    as_json = run("audit", "verify", "--run", "o", "--json", cwd=tmp_path)
    assert json.loads(as_json.stdout)["ok"] is True

    exported = run("audit", "export", "--run", "o", "--out", "x.jsonl",
                   "--since", "2000-01-01", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    header = json.loads((tmp_path / "x.jsonl").read_text().splitlines()[0])
    assert header["entries"] == 6 and header["verdict"]["ok"] is True

    lines = (out / "audit.jsonl").read_text().splitlines(keepends=True)
    (out / "audit.jsonl").write_text("".join(lines[:2] + lines[3:]))  # delete seq 3
    bad = run("audit", "verify", "--run", "o", cwd=tmp_path)
    said = " ".join(bad.stdout.split())
    assert bad.returncode == 1 and "line 3 (seq 4)" in said and "deleted" in said, said
    key = run("audit", "verify", "--log", "o/audit.jsonl", "--key", "o/audit-key.pub.pem",
              "--anchor", "9:" + "0" * 64, cwd=tmp_path)
    assert key.returncode == 1

    assert run("audit", "verify", cwd=tmp_path).returncode == 2  # no log named
    assert run("audit", "verify", "--log", "o/audit.jsonl", cwd=tmp_path).returncode == 2
    assert run("audit", "verify", "--run", "nope", cwd=tmp_path).returncode == 2
    assert run("audit", "export", "--run", "o", "--out", "y.jsonl", "--since", "yesterday",
               cwd=tmp_path).returncode == 2
