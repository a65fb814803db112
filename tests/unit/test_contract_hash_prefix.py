"""A study may name its data contract by a unique prefix of the hash (issue 14, item 4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcare.config import contract_matches, parse_config
from fedcare.core.errors import ConfigError, DataError
from fedcare.data.contract import contract_hash, feature_columns, load_contract

A = "ab12" * 16
B = "ab12" * 2 + "ff" * 28  # shares A's first 8 digits


def _data(**extra: object) -> dict:
    return {"source": "federation", "dataset": "cardio", "label": "y", "features": ["age"],
            **extra}


def test_a_prefix_of_at_least_8_hex_digits_is_a_valid_contract_hash() -> None:
    assert parse_config({"data": _data(contract_hash="AB12AB12")}).data.contract_hash \
        == "ab12ab12"  # type: ignore[union-attr]
    assert parse_config({"data": _data(contract_hash=A)}).data.contract_hash == A  # type: ignore[union-attr]
    for bad in ("ab12ab1", "zz12ab12", A + "0"):
        with pytest.raises(ConfigError, match="contract_hash"):
            parse_config({"data": _data(contract_hash=bad)})


def test_a_prefix_matches_only_hashes_that_start_with_it() -> None:
    assert contract_matches("ab12ab12", A) and contract_matches("AB12AB12", A)
    assert contract_matches(A, A) and not contract_matches(A, B)
    assert not contract_matches("ab12ab13", A)


def test_the_hub_refuses_a_prefix_two_sites_contracts_share(tmp_path: Path) -> None:
    from fedcare.hub.service import HubService, NeverRevoked

    svc = HubService(tmp_path / "hub", revocation=NeverRevoked())
    try:
        for site, h in (("a", A), ("b", B)):
            svc.hello(site, "01", "x", [{"name": "cardio", "rows": 100, "contract_hash": h}],
                      "s")
        with pytest.raises(ConfigError, match="prefix of 2 different data contracts"):
            svc.submit_study({"data": _data(contract_hash="ab12ab12")})
        with pytest.raises(ConfigError, match=r"sites \['a'\] built dataset"):
            svc.submit_study({"data": _data(contract_hash=B[:12])})  # unique: b's, a differs
    finally:
        svc.stop()
        svc.db.dispose()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    from fedcare.demo.hospitals import write_hospitals
    from fedcare.node.site_data import build_clinical_table

    contract, sites = write_hospitals(tmp_path_factory.mktemp("demo"))
    return contract, build_clinical_table(sites[2].source, contract, sites[2].name)


def test_a_node_trains_for_a_prefix_of_its_contracts_hash_and_refuses_another(built) -> None:
    from fedcare.node.site_data import clinical_site_data

    contract_file, table = built
    c = load_contract(contract_file)
    full = contract_hash(c)

    def study(h: str):
        return parse_config({"data": {**_data(contract_hash=h), "label": c.label.name,
                                      "features": feature_columns(c)}}).data

    data = clinical_site_data(study(full[:8]), "h", 0, 0, table)  # type: ignore[arg-type]
    assert len(data.y_train) + len(data.y_test) == table.rows
    other = format(int(full[:8], 16) ^ 1, "08x")
    with pytest.raises(DataError, match="names data contract"):
        clinical_site_data(study(other), "h", 0, 0, table)  # type: ignore[arg-type]
