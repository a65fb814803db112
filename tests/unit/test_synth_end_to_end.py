"""Each synthetic hospital, read by its own adapter and harmonized under the demo contract,
gives exactly the generator's ground truth (values compared after rounding to 4 decimals;
see :data:`fedcare.data.synth.model.COMPARE_DECIMALS`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedcare.data.adapters.canonical import CanonicalRecords
from fedcare.data.synth import FEATURES, LABEL, generate_hospitals
from fedcare.data.synth.model import COMPARE_DECIMALS

CONTRACT = Path(__file__).resolve().parents[2] / "examples" / "contracts" / "cardio.toml"


def _load(h: Any) -> CanonicalRecords:
    if h.format == "fhir":
        from fedcare.data.adapters.fhir import load_fhir

        return load_fhir(h.paths, validate="all")
    if h.format == "omop":
        from fedcare.data.adapters.omop import load_omop

        return load_omop(h.paths[0].parent, **h.adapter_options)
    from fedcare.data.adapters.csv_adapter import load_wide

    return load_wide(h.paths, h.mapping_path)


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    return generate_hospitals(tmp_path_factory.mktemp("e2e"), patients=(150, 160, 140), seed=11)


@pytest.mark.parametrize("k", [0, 1, 2], ids=["fhir", "omop", "csv"])
def test_harmonized_features_equal_the_ground_truth(hospitals: list[Any], k: int) -> None:
    from fedcare.data.contract import load_contract
    from fedcare.data.features import build_features

    h = hospitals[k]
    records = _load(h)
    table = build_features(load_contract(CONTRACT), records)

    assert dict(records.rejects) == h.expected_rejects
    got = table.frame.reset_index().sort_values("person_id", ignore_index=True)
    truth = h.truth.dropna().reset_index(drop=True)  # the contract drops rows missing a lab
    assert list(got.columns) == ["person_id", *FEATURES, LABEL]
    assert got["person_id"].tolist() == truth["person_id"].tolist()
    for col in FEATURES:
        assert (got[col].astype(float).round(COMPARE_DECIMALS)
                == truth[col].round(COMPARE_DECIMALS)).all(), col
    assert (got[LABEL].astype(int) == truth[LABEL]).all()
    attrition = dict(table.attrition)
    assert attrition["no index date"] == h.excluded["no index encounter"]
    # persons outside 30..90: the generator's plus the wide export's re-exported defect row
    assert attrition["age outside [30, 90]"] - h.excluded["age outside cohort"] == (
        1 if h.format == "csv" else 0)
