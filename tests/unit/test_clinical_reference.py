"""A generated reference for every clinical settings file (issue 14, item 11): every key the
schema accepts is listed, with a description, and the README's OMOP example works as written."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from fedcare.data.reference import CLINICAL_FILES, clinical_reference

ROOT = Path(__file__).resolve().parents[2]


def _schema_properties(schema: dict[str, Any], skip: set[str]) -> list[tuple[str, str, str]]:
    """(model, property, description) of every model in a JSON schema -- pydantic's own view
    of the file, independent of the reference walker."""
    out = []
    models = dict(schema.get("$defs", {}))
    if "properties" in schema:
        models[schema.get("title", "root")] = schema
    for name, model in models.items():
        if name in skip:
            continue
        for prop, spec in model.get("properties", {}).items():
            out.append((name, prop, spec.get("description", "")))
    return out


def _schemas() -> dict[str, tuple[dict[str, Any], set[str]]]:
    from fedcare.data.adapters.csv_adapter import CsvMapping
    from fedcare.data.adapters.source import SiteSource
    from fedcare.data.contract import Contract

    return {
        # MissingPolicy is written as one string ("impute_value:3"), not as a table
        "contract": (Contract.model_json_schema(), {"MissingPolicy"}),
        "source": (TypeAdapter(SiteSource).json_schema(), set()),
        "csv-mapping": (TypeAdapter(CsvMapping).json_schema(), set()),
    }


@pytest.mark.parametrize("name", sorted(CLINICAL_FILES))
def test_every_row_has_a_meaning(name: str) -> None:
    rows = clinical_reference(name)
    assert rows
    assert [k for k, _, d in rows if not d.strip()] == []
    assert len({k for k, _, _ in rows}) == len(rows)  # no key twice


@pytest.mark.parametrize("name", ["contract", "source", "csv-mapping"])
def test_every_schema_field_is_documented_and_listed(name: str) -> None:
    schema, skip = _schemas()[name]
    listed = {k.rsplit(".", 1)[-1].split("]")[-1] for k, _, _ in clinical_reference(name)}
    props = [p for p in _schema_properties(schema, skip) if p[1] != "base"]  # not a user key
    assert props
    assert [(m, p) for m, p, d in props if not d] == []
    assert sorted({p for _, p, _ in props} - listed) == []


def test_the_reference_names_nested_keys_as_the_user_writes_them() -> None:
    contract = {k for k, _, _ in clinical_reference("contract")}
    assert {"index.rule", "windows.<name>.days_before", "features[source=measurement].unit",
            "features[source=condition|drug].codes.RXNORM", "cohort.exclude_prior[].codes.SNOMED",
            "quality.min_label_count", "label.days_after"} <= contract
    source = {k for k, _, _ in clinical_reference("source")}
    assert {"format", "code_mapping", "[format=omop].source_vocabulary", "[format=fhir].paths",
            "[format=csv].mapping"} <= source
    csv = {k for k, _, _ in clinical_reference("csv-mapping")}
    assert {"[layout=wide].columns[].unit_column", "[layout=long].events.system_value"} <= csv
    omop = {k for k, _, _ in clinical_reference("omop")}
    assert {"source_vocabulary.condition", "source_vocabulary.drug"} <= omop


def test_choices_list_their_values_and_defaults_read_as_written() -> None:
    rows = {k: (d, s) for k, d, s in clinical_reference("contract")}
    assert "first_encounter" in rows["index.rule"][1] and "fixed_date" in rows["index.rule"][1]
    assert rows["features[source=measurement].aggregation"][0] == "'last'"
    assert rows["features[source=measurement].missing"][0] == "'drop_row'"


def test_config_reference_prints_each_file_and_refuses_an_unknown_one() -> None:
    from typer.testing import CliRunner

    from fedcare.cli.main import app

    runner = CliRunner()
    for name in CLINICAL_FILES:
        result = runner.invoke(app, ["config-reference", "--file", name])
        assert result.exit_code == 0, result.output
        assert result.output.startswith("| key | default | meaning |")
        for key, _, _ in clinical_reference(name):
            assert f"| `{key}` |" in result.output
    bad = runner.invoke(app, ["config-reference", "--file", "hl7"])
    assert bad.exit_code == 2 and "contract" in bad.output


#: The README's OMOP example ("Clinical data"), exactly as the README shows it.
README_OMOP_SOURCE = '''\
# source.toml, kept at the site beside its OMOP CDM export
site = "hospital-2"
format = "omop"
omop = "omop/"                    # folder of CDM tables (CSV/Parquet) or a .duckdb file
# the code system of each *_source_value column: rows then also match the contract's
# ICD-10-CM / RxNorm / LOINC codes, not only the OMOP concept ids it lists
source_vocabulary = { condition = "ICD10CM", drug = "RXNORM", measurement = "LOINC" }
'''


def test_the_readme_omop_example_works_as_written(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert README_OMOP_SOURCE in readme, "the README's OMOP example changed: update this test"

    from fedcare.cli.main import app
    from fedcare.data.synth import generate_hospitals

    # Arrange: a synthetic OMOP export beside the README's files
    exports = generate_hospitals(tmp_path / "exports", 2, (300, 400))
    omop = next(h for h in exports if h.format == "omop")
    shutil.copytree(omop.paths[0].parent, tmp_path / "omop")
    shutil.copyfile(ROOT / "examples/contracts/cardio.toml", tmp_path / "cardio.toml")
    (tmp_path / "source.toml").write_text(README_OMOP_SOURCE)
    # Act: the README's command, from the folder holding the files
    import os

    here = Path.cwd()
    os.chdir(tmp_path)
    try:
        result = CliRunner().invoke(app, ["data", "check", "--contract", "cardio.toml",
                                          "--data", "source.toml", "--html", "quality.html"])
    finally:
        os.chdir(here)
    # Assert
    assert result.exit_code == 0, result.output
    assert "passes minimum quality" in result.output and "hospital-2" in result.output
    assert (tmp_path / "quality.html").is_file()
