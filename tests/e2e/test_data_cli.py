"""``fedcare data check | build`` and ``fedcare simulate`` over clinical exports, as a site's data
scientist runs them: real subprocesses, real files, exit codes (issue 14, items 4, 11, 12)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedcare.data.contract import contract_hash, load_contract

FEDCARE = [sys.executable, "-m", "fedcare.cli.main"]


def run(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {"COLUMNS": "80", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    if "PYTHONPATH" in os.environ:  # the code under test, not whatever is installed
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return subprocess.run([*FEDCARE, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory: pytest.TempPathFactory):
    from fedcare.demo.hospitals import write_hospitals

    return write_hospitals(tmp_path_factory.mktemp("hospitals"))


def test_data_check_prints_the_full_contract_hash(hospitals) -> None:
    contract, sites = hospitals
    result = run("data", "check", "--contract", str(contract), "--data", str(sites[0].source))
    assert result.returncode == 0, result.stdout + result.stderr
    full = contract_hash(load_contract(contract))
    assert re.search(rf"(?m)^{full}$", result.stdout), result.stdout  # whole, on its own line


def test_data_build_writes_the_sites_table_owner_only(hospitals, tmp_path: Path) -> None:
    contract, sites = hospitals
    out = tmp_path / "table.parquet"
    result = run("data", "build", "--contract", str(contract), "--data", str(sites[1].source),
                 "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passes minimum quality" in result.stdout and "cohort rows" in result.stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    table = pd.read_parquet(out)
    truth = sites[1].truth.dropna().set_index("person_id")
    assert list(table.columns) == list(truth.columns)
    assert sorted(table.index) == sorted(truth.index)
    np.testing.assert_allclose(table.loc[truth.index].to_numpy(float),
                               truth.to_numpy(float), atol=1e-4)


def test_data_build_refuses_a_table_that_fails_quality_unless_forced(hospitals,
                                                                     tmp_path: Path) -> None:
    contract, sites = hospitals
    strict = tmp_path / "strict.toml"
    strict.write_text(contract.read_text().replace("min_rows = 50", "min_rows = 100000"))
    out = tmp_path / "table.parquet"
    args = ("data", "build", "--contract", str(strict), "--data", str(sites[0].source),
            "--out", str(out))
    refused = run(*args)
    assert refused.returncode == 2 and "at least 100000" in refused.stdout
    assert "--force" in refused.stdout and not out.exists()
    forced = run(*args, "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert len(pd.read_parquet(out)) == len(sites[0].truth.dropna())


def test_a_clinical_simulation_trains_on_the_tables_data_build_writes(hospitals,
                                                                      tmp_path: Path) -> None:
    # Arrange: each site's table as `fedcare data build` writes it at the site
    contract, sites = hospitals
    written = {}
    for site in sites:
        out = tmp_path / f"{site.name}.parquet"
        assert run("data", "build", "-c", str(contract), "-d", str(site.source), "-o",
                   str(out)).returncode == 0
        written[site.name] = pd.read_parquet(out)
    study = tmp_path / "study.toml"
    lines = ['[study]\nname = "cardio-sim"\nrounds = 2\n', '[data]\nsource = "clinical"',
             f'contract = "{contract}"', "standardize = false", "test_fraction = 0.25"]
    for site in sites:
        lines.append(f'[[data.site]]\nname = "{site.name}"\nsource = "{site.source}"')
    lines.append("[baselines]\nlocal = false\ncentralized = false")
    study.write_text("\n".join(lines) + "\n")

    # Act: the simulation's per-site data, then a real run of the study
    from fedcare.config import load_config
    from fedcare.sim.sites import build_sites

    cfg = load_config(study)
    site_data = build_sites(cfg.data, cfg.study.seed)
    result = run("simulate", str(study), "--out", str(tmp_path / "run"))

    # Assert: every site trains and tests on exactly the rows of its written table
    assert [s.name for s in site_data] == [s.name for s in sites]
    label = load_contract(contract).label.name
    for s in site_data:
        table = written[s.name]
        assert list(s.feature_names) == [c for c in table.columns if c != label]
        rows = np.concatenate([np.c_[s.x_train, s.y_train], np.c_[s.x_test, s.y_test]])
        expected = table.to_numpy(np.float32)
        assert rows.shape == expected.shape
        np.testing.assert_array_equal(rows[np.lexsort(rows.T)], expected[np.lexsort(expected.T)])
    assert result.returncode == 0, result.stdout + result.stderr
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history["rounds"]) == 2


def test_the_simulation_split_is_the_nodes_split(hospitals) -> None:
    """Simulation and deployment give every site the same train/test rows."""
    from fedcare.config import parse_config
    from fedcare.data.contract import feature_columns
    from fedcare.node.site_data import build_clinical_table, clinical_site_data
    from fedcare.sim.sites import build_sites

    contract, sites = hospitals
    c = load_contract(contract)
    sim = parse_config({"study": {"seed": 7}, "data": {
        "source": "clinical", "contract": str(contract), "standardize": False,
        "site": [{"name": s.name, "source": str(s.source)} for s in sites]}})
    node = parse_config({"study": {"seed": 7}, "data": {
        "source": "federation", "dataset": "cardio", "label": c.label.name,
        "features": feature_columns(c), "contract_hash": contract_hash(c)[:8]}})
    for i, (simulated, site) in enumerate(zip(build_sites(sim.data, 7), sites, strict=True)):
        deployed = clinical_site_data(node.data, site.name, i, 7,  # type: ignore[arg-type]
                                      build_clinical_table(site.source, contract, site.name))
        np.testing.assert_array_equal(simulated.x_train, deployed.x_train)
        np.testing.assert_array_equal(simulated.y_test, deployed.y_test)
