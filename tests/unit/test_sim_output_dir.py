"""``fedcare simulate`` without ``--out`` writes under ``./runs/`` whatever the study's name
(audit finding F20: ``study.name = "../../escaped-audit"`` or an absolute path wrote there)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedcare.cli.main import app
from fedcare.sim.runner import default_output_dir

CONFIG = """[study]
name = "{name}"
rounds = 1
[data]
source = "builtin"
dataset = "breast_cancer"
sites = 2
[model]
name = "logreg"
[baselines]
local = false
centralized = false
"""


@pytest.mark.parametrize("name,folder", [
    ("../../escaped-audit", "escaped-audit"),
    ("/tmp/abs-audit", "tmp-abs-audit"),
    ("a/../../b", "a-..-..-b"),
    ("..\\..\\win", "win"),
    ("C:\\Users\\x", "C-Users-x"),
    ("..", "study"),
    ("line\nbreak", "line-break"),
    ("My study (v2)", "My study (v2)"),  # ordinary names are unchanged
    ("étude.cardio", "étude.cardio"),
])
def test_the_default_folder_is_one_component_under_runs(name: str, folder: str) -> None:
    out = default_output_dir(name)
    assert out == Path("runs") / folder
    assert len(out.parts) == 2 and out.parts[1] not in (".", "..")


@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_simulate_writes_under_runs_whatever_the_study_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    work = tmp_path / "a" / "b" / "work"
    work.mkdir(parents=True)
    name = "../../escaped-audit" if kind == "relative" else str(tmp_path / "abs-audit")
    (work / "cfg.toml").write_text(CONFIG.format(name=name))
    monkeypatch.chdir(work)

    res = CliRunner().invoke(app, ["simulate", "cfg.toml"])

    assert res.exit_code == 0, res.output
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")
                     if p.is_file())
    assert written and all(p.startswith("a/b/work/") for p in written), written
    runs = list((work / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "report.html").is_file()
    # The study keeps its name where people read it.
    assert json.loads((runs[0] / "history.json").read_text())["study"] == name
