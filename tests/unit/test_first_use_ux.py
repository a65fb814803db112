"""What a user hits in the first hour (issue 14, item 15, and the researcher's side of 13):
choices spelt in another case, misspelt choices and keys of another strategy; --version;
config-schema; help text with brackets; the console's privacy line; sites with very few
rows; the researcher's credential from the environment."""

from __future__ import annotations

import json
import logging
import re
import warnings
from pathlib import Path

import click
import pandas as pd
import pytest
import typer.main
from rich.text import Text
from typer.testing import CliRunner

from fedcare.cli.main import app
from fedcare.config import FederatedData, content_hash, parse_config
from fedcare.core.errors import ConfigError

runner = CliRunner()
BASE = {"data": {"source": "builtin", "sites": 2}}


def _problems(doc: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    return str(info.value)


# -- choices -------------------------------------------------------------------------------
def test_choice_names_match_ignoring_case_and_hash_as_written_in_lower_case() -> None:
    shouted = parse_config({"data": {"source": "Builtin", "sites": 2, "partition": "IID"},
                            "strategy": {"name": "FedProx", "mu": 0.1},
                            "model": {"name": "MLP"}, "train": {"optimizer": "Adam"},
                            "privacy": {"mode": "none"}})
    plain = parse_config({"data": {"source": "builtin", "sites": 2, "partition": "iid"},
                          "strategy": {"name": "fedprox", "mu": 0.1},
                          "model": {"name": "mlp"}, "train": {"optimizer": "adam"}})
    assert shouted.strategy.name == "fedprox" and shouted.model.name == "mlp"
    assert shouted == plain
    assert content_hash(shouted) == content_hash(plain)


@pytest.mark.parametrize(("section", "value", "suggestion"), [
    ("strategy", {"name": "fedprx"}, "did you mean 'fedprox'?"),
    ("model", {"name": "transfomer"}, "did you mean 'transformer'?"),
    ("train", {"optimizer": "adamm"}, "did you mean 'adam'?"),
])
def test_a_misspelt_choice_gets_a_suggestion(section: str, value: dict,
                                             suggestion: str) -> None:
    assert suggestion in _problems({**BASE, section: value})


def test_no_suggestion_when_nothing_is_close() -> None:
    assert "did you mean" not in _problems({**BASE, "strategy": {"name": "zzzzzz"}})


def test_a_key_of_another_strategy_says_which_strategy_takes_it() -> None:
    text = _problems({**BASE, "strategy": {"name": "fedavg", "mu": 0.1}})
    assert "unknown key 'strategy.mu': mu only applies to fedprox" in text
    text = _problems({**BASE, "model": {"name": "logreg", "hidden": [4]}})
    assert re.search(r"hidden only applies to .*mlp", text)
    # A key nobody declares stays a plain unknown key.
    assert "only applies" not in _problems({**BASE, "strategy": {"name": "fedavg", "nu": 1}})


# -- the command line ----------------------------------------------------------------------
def test_version_option() -> None:
    from fedcare import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_config_schema_describes_the_study_file(tmp_path: Path) -> None:
    import jsonschema

    out = tmp_path / "study.schema.json"
    result = runner.invoke(app, ["config-schema", "--out", str(out)])
    assert result.exit_code == 0, result.output
    schema = json.loads(out.read_text())
    assert {"study", "data", "strategy", "privacy", "tracking"} <= set(schema["properties"])
    jsonschema.Draft202012Validator.check_schema(schema)
    good = {"data": {"source": "builtin"}, "strategy": {"name": "fedprox", "mu": 0.1}}
    jsonschema.validate(good, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"data": {"source": "builtin"}, "train": {"lr": "fast"}}, schema)


def _help_texts(command: click.Command, path: str = "fedcare"):
    yield path, command.help or ""
    for param in command.params:
        yield f"{path} {param.name}", getattr(param, "help", None) or ""
    for name, sub in getattr(command, "commands", {}).items():
        yield from _help_texts(sub, f"{path} {name}")


def test_rich_markup_eats_no_bracketed_text_in_help() -> None:
    """Every help text (not the epilogs, written as markup) shows its brackets as written:
    `[privacy]` used to vanish from `fedcare node privacy --help`."""
    checked = 0
    for where, text in _help_texts(typer.main.get_command(app)):
        if "[" not in text:
            continue
        checked += 1
        shown = Text.from_markup(text).plain
        assert shown == text.replace("\\[", "["), where
    assert checked
    result = runner.invoke(app, ["node", "privacy", "--help"], env={"COLUMNS": "200"})
    assert "[privacy] policy" in result.output


def test_console_summary_states_dp_and_secure_aggregation() -> None:
    from fedcare.cli.render import privacy_line

    history = {"config": {"privacy": {"mode": "dp_fedavg_distributed", "delta": 1e-5,
                                      "accountant": "pld"},
                          "secure_aggregation": {"protocol": "secagg"}},
               "rounds": [{"round": 1, "epsilon": 0.8}, {"round": 2, "epsilon": 1.25}]}
    line = privacy_line(history)
    assert "epsilon = 1.25" in line and "delta = 1e-05" in line and "secagg" in line
    plain = privacy_line({"config": {}, "rounds": []})
    assert "no differential privacy" in plain and "no secure aggregation" in plain


def test_simulate_prints_the_privacy_line(tmp_path: Path) -> None:
    study = tmp_path / "s.toml"
    study.write_text('[study]\nrounds = 1\n[data]\nsource = "builtin"\nsites = 2\n'
                     '[baselines]\nlocal = false\ncentralized = false\n[run]\nworkers = 1\n')
    result = runner.invoke(app, ["simulate", str(study), "--out", str(tmp_path / "out")],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Privacy: no differential privacy; no secure aggregation" in result.output


# -- sites with very few rows --------------------------------------------------------------
def test_simulation_warns_about_a_site_with_very_few_rows() -> None:
    from fedcare.sim.runner import _Run

    cfg = parse_config({"study": {"rounds": 1},
                        "data": {"source": "synthetic", "sites": 2, "rows_per_site": 30}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _Run(cfg, None, None, False, False).prepare()
    texts = [str(w.message) for w in caught]
    assert any("site site-1 has only 30 rows" in t for t in texts), texts


def test_node_warns_when_it_builds_a_dataset_with_very_few_rows(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from fedcare.node.site_data import build_site_data

    path = tmp_path / "tiny.csv"
    pd.DataFrame({"a": range(20), "y": [0, 1] * 10}).to_csv(path, index=False)
    data = FederatedData(source="federation", dataset="tiny", label="y", features=["a"])
    with caplog.at_level(logging.WARNING, logger="fedcare.node"):
        build_site_data(data, "tiny-site", 0, 0, path)
    assert "site tiny-site has only 20 rows" in caplog.text
    caplog.clear()
    big = tmp_path / "big.csv"
    pd.DataFrame({"a": range(200), "y": [0, 1] * 100}).to_csv(big, index=False)
    with caplog.at_level(logging.WARNING, logger="fedcare.node"):
        build_site_data(data, "big-site", 0, 0, big)
    assert "rows" not in caplog.text


# -- the researcher's credential ------------------------------------------------------------
def test_token_comes_from_a_file_or_the_environment_never_the_command_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedcare.client import HubClient
    from fedcare.hub.provisioning import create_federation

    create_federation(tmp_path / "fed", hub_host="localhost", sites=[],
                      site_kits=tmp_path / "kits")
    researcher = tmp_path / "fed" / "researcher"
    ca, url = researcher / "ca.crt", "https://localhost:8443"
    monkeypatch.delenv("FEDCARE_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="FEDCARE_TOKEN"):
        HubClient(None, url, ca, None)
    monkeypatch.setenv("FEDCARE_TOKEN", "from-env")
    assert HubClient(None, url, ca, None).http.headers["Authorization"] == "Bearer from-env"
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    client = HubClient(None, url, ca, None, token_file)
    assert client.http.headers["Authorization"] == "Bearer from-file"
    monkeypatch.delenv("FEDCARE_TOKEN")
    own = (researcher / "researcher.token").read_text().strip()
    assert HubClient(researcher, None, None, None).http.headers["Authorization"] == (
        f"Bearer {own}")
    # The command line has no option that takes the secret itself.
    result = runner.invoke(app, ["study", "list", "--token", "x"])
    assert result.exit_code == 2 and "No such option" in result.output
    # FEDCARE_FEDERATION stands for --federation.
    result = runner.invoke(app, ["study", "list"], env={"FEDCARE_FEDERATION": str(researcher),
                                                        "FEDCARE_TOKEN": ""})
    assert "give --federation" not in result.output
    assert "cannot reach the hub" in result.output
