"""`fedcare simulate` as a new user runs it (issue 14, items 5 and 8): a DP study that cannot
learn is refused before training with the numbers (exit 2) unless --force; the console shows
the trivial prediction's score and the comparison in words."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FEDCARE = [sys.executable, "-m", "fedcare.cli.main"]

STUDY = """
[study]
name = "dp-cli"
rounds = 2
primary_metric = "balanced_accuracy"
[data]
source = "builtin"
sites = 4
stats_clip = [0, 4300]
[model]
name = "logreg"
[run]
workers = 1
[privacy]
mode = "dp_fedavg_central"
clip = 0.5
target_epsilon = 1.0
"""


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    import os

    env = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return subprocess.run([*FEDCARE, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600, env=env)


def test_unlearnable_dp_is_refused_then_forced(tmp_path: Path) -> None:
    (tmp_path / "study.toml").write_text(STUDY)

    refused = run("simulate", "study.toml", "--out", "out", cwd=tmp_path)
    wrote = (tmp_path / "out" / "history.json").exists()
    forced = run("simulate", "study.toml", "--out", "out", "--force", cwd=tmp_path)

    assert refused.returncode == 2, refused.stdout + refused.stderr
    said = " ".join((refused.stdout + refused.stderr).split())
    assert "noise std on the averaged update" in said and "cannot learn" in said
    assert "more sites" in said and "--force" in said
    assert not wrote
    assert forced.returncode == 0, forced.stderr
    out = " ".join(forced.stdout.split())
    assert "warning (--force)" in out
    assert "trivial = best constant prediction's balanced_accuracy" in out
    assert "On balanced_accuracy (higher is better): federated is" in out
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert history["primary_metric"] == "balanced_accuracy"
    assert history["baselines"]["local"]["note"] == "no DP — reference only"
