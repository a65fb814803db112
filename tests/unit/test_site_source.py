"""The site source file (source.toml): each format declares its own keys, and a wrong or
missing one is refused by name before any data is read."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcare.core.errors import ConfigError
from fedcare.data.adapters.source import CsvSource, FhirSource, OmopSource, load_source


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "source.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "kind"), [
    ('format = "csv"\nmapping = "m.toml"\npaths = ["a.csv"]', CsvSource),
    ('format = "omop"\nomop = "omop/"\nsource_vocabulary = { condition = "ICD10CM" }',
     OmopSource),
    ('format = "fhir"\npaths = ["export/"]', FhirSource),
])
def test_each_format_reads_its_own_keys(tmp_path: Path, text: str, kind: type) -> None:
    source = load_source(_write(tmp_path, text))
    assert isinstance(source, kind)
    assert source.base == tmp_path


@pytest.mark.parametrize(("text", "message"), [
    ('format = "csv"\nmapping = "m.toml"\nomop = "x/"', "unknown key 'omop'"),
    ('format = "csv"\npaths = ["a.csv"]', "missing key 'mapping'"),
    ('format = "omop"', "missing key 'omop'"),
    ('format = "fhir"\npaths = []', "'paths'"),
    ('format = "hl7v2"\npaths = ["x"]', "'hl7v2' is not one of 'csv', 'omop', 'fhir'"),
    ('paths = ["x"]', "format"),
])
def test_a_wrong_or_missing_key_is_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_source(_write(tmp_path, text))
    assert message in str(err.value)
    assert str(tmp_path / "source.toml") in str(err.value)


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_source(tmp_path / "nope.toml")
