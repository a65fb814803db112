"""A node's clinical dataset: built from the site's own export by the data contract, refused
when it fails the contract's minimum quality or is not the contract the study names."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcare.config import parse_config
from fedcare.core.errors import DataError
from fedcare.data.contract import contract_hash, feature_columns, load_contract
from fedcare.demo.hospitals import contract_path, write_hospitals
from fedcare.node.local_config import load_node_data
from fedcare.node.site_data import build_clinical_table, clinical_site_data

ROOT = Path(__file__).resolve().parents[2]


def _study(contract_file: Path, **data: object):
    c = load_contract(contract_file)
    return parse_config({"data": {"source": "federation", "dataset": "cardio",
                                  "label": c.label.name, "features": feature_columns(c),
                                  "contract_hash": contract_hash(c), **data}}).data


def test_the_shipped_demo_contract_is_the_example_contract() -> None:
    assert contract_path().read_bytes() == (ROOT / "examples/contracts/cardio.toml").read_bytes()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    return write_hospitals(tmp_path_factory.mktemp("demo"))


def test_demo_sites_configs_load_and_build_the_truth(demo) -> None:
    contract_file, sites = demo
    for site in sites:
        node = load_node_data(site.node_config)
        assert set(node.clinical) == {"cardio"} and node.privacy_policy is not None
        built = build_clinical_table(node.clinical["cardio"].source,
                                     node.clinical["cardio"].contract, site.name)
        assert built.violations == []
        assert built.rows == len(site.truth.dropna())
        sd = clinical_site_data(_study(contract_file), site.name, 0, 0, built)
        assert len(sd.y_train) + len(sd.y_test) == built.rows
        # what leaves the site: suppressed counts only, never a row
        text = str(built.report)
        assert not any(pid in text for pid in built.table.frame.index[:50])


def test_a_study_naming_another_contract_is_refused(demo) -> None:
    contract_file, sites = demo
    built = build_clinical_table(sites[0].source, contract_file, sites[0].name)
    with pytest.raises(DataError, match="names data contract"):
        clinical_site_data(_study(contract_file, contract_hash="0" * 64), "s", 0, 0, built)
    wrong = _study(contract_file, features=["age", "sbp"])
    with pytest.raises(DataError, match="are not the contract's"):
        clinical_site_data(wrong, "s", 0, 0, built)


def test_data_failing_minimum_quality_is_refused(demo, tmp_path: Path) -> None:
    contract_file, sites = demo
    strict = tmp_path / "strict.toml"
    strict.write_text(contract_file.read_text().replace("min_rows = 50", "min_rows = 100000"))
    built = build_clinical_table(sites[0].source, strict, sites[0].name)
    assert built.violations and "at least 100000" in built.violations[0]
    with pytest.raises(DataError, match="refusing to train"):
        clinical_site_data(_study(strict), sites[0].name, 0, 0, built)


def test_a_clinical_study_must_name_its_contract(demo) -> None:
    contract_file, sites = demo
    built = build_clinical_table(sites[0].source, contract_file, sites[0].name)
    with pytest.raises(DataError, match="names no data contract"):
        clinical_site_data(_study(contract_file, contract_hash=None), "s", 0, 0, built)


def test_the_hub_refuses_a_study_whose_sites_used_different_contracts(tmp_path: Path) -> None:
    from fedcare.core.errors import ConfigError
    from fedcare.hub.service import HubService, NeverRevoked

    svc = HubService(tmp_path / "hub", revocation=NeverRevoked())
    try:
        for site, h in (("a", "1" * 64), ("b", "2" * 64)):
            svc.hello(site, "01", "x", [{"name": "cardio", "rows": 100, "contract_hash": h}],
                      "s")
        study = {"data": {"source": "federation", "dataset": "cardio", "label": "y",
                          "features": ["age"]}}
        with pytest.raises(ConfigError, match="different data contracts"):
            svc.submit_study(study)
        with pytest.raises(ConfigError, match=r"sites \['b'\] built dataset"):
            svc.submit_study({**study, "data": {**study["data"], "contract_hash": "1" * 64}})
    finally:
        svc.stop()
        svc.db.dispose()


def test_study_data_shows_each_sites_cohort_rows_and_label_rate(demo) -> None:
    """`fedcare study data` read a key the reports do not have and printed "cohort rows ?"
    for every site, and no label rates (first-use issue, item 4)."""
    from rich.console import Console

    from fedcare.cli.render import quality_table
    from fedcare.hub.schemas import DatasetQuality

    _, sites = demo
    reports = {}
    for site in sites:
        node = load_node_data(site.node_config)
        built = build_clinical_table(node.clinical["cardio"].source,
                                     node.clinical["cardio"].contract, site.name)
        reports[site.name] = {**built.report, "violations": built.violations}
    console = Console(record=True, width=200)
    console.print(quality_table(DatasetQuality(dataset="cardio", reports=reports,
                                               comparison=None, refusing={})))
    text = console.export_text()
    for name, report in reports.items():
        line = next(row for row in text.splitlines() if name in row)
        assert str(report["cohort_rows"]) in line and "?" not in line
        pos, neg = report["label"]["positive"], report["label"]["negative"]
        assert f"{pos / (pos + neg):.1%}" in line
