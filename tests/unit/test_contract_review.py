"""Contract values that parse but make no sense are refused; `fedcare data check` refuses a
min-cell below 1 with a usage error, not a traceback."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedcare.core.errors import ConfigError
from fedcare.data.contract import parse_contract

CARDIO = Path(__file__).resolve().parents[2] / "examples" / "contracts" / "cardio.toml"


def _raw() -> dict:
    return tomllib.loads(CARDIO.read_text())


@pytest.mark.parametrize("mutate, expect", [
    (lambda r: r["features"][2].update(missing="impute_value:nan"), "finite"),
    (lambda r: r["features"][2].update(missing="impute_value:inf"), "finite"),
    (lambda r: r["features"][2].update(missing="impute_value:-Infinity"), "finite"),
    (lambda r: r["features"][2].update(missing={"kind": "impute_value",
                                                "value": float("nan")}), "finite"),
    (lambda r: r["features"][2].update(missing={"kind": "impute_value"}), "takes a value"),
    (lambda r: r.setdefault("quality", {}).update(max_missing_by_feature={"sbp": 1.5}),
     "less than or equal to 1"),
    (lambda r: r.setdefault("quality", {}).update(max_missing_by_feature={"sbp": -0.1}),
     "greater than or equal to 0"),
    (lambda r: r.setdefault("quality", {}).update(max_missing_by_feature={"sbp": float("nan")}),
     "max_missing_by_feature"),
    (lambda r: r.setdefault("cohort", {}).update(age=[90, 30]), "lower bound is above"),
    (lambda r: r.setdefault("cohort", {}).update(age=[30, float("inf")]), "finite"),
])
def test_nonsense_values_are_refused(mutate, expect) -> None:
    raw = _raw()
    mutate(raw)
    with pytest.raises(ConfigError) as err:
        parse_contract(raw)
    assert expect in str(err.value)


def test_sensible_values_still_parse() -> None:
    raw = _raw()
    raw["features"][2]["missing"] = "impute_value:120"
    raw.setdefault("quality", {})["max_missing_by_feature"] = {"sbp": 0.0, "hdl": 1.0}
    raw.setdefault("cohort", {})["age"] = [40, 40]
    c = parse_contract(raw)
    assert c.features[2].missing.value == 120.0 and c.cohort.age == (40.0, 40.0)


@pytest.mark.parametrize("value", ["0", "-3"])
def test_cli_min_cell_below_one_is_a_usage_error(tmp_path: Path, value: str) -> None:
    from fedcare.cli.data import app

    (tmp_path / "s.toml").write_text('format = "csv"\n')
    res = CliRunner().invoke(app, ["check", "--contract", str(CARDIO), "--data",
                                   str(tmp_path / "s.toml"), "--min-cell", value])
    assert res.exit_code == 2
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert "min-cell" in res.output
