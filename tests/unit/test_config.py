"""Study configuration: unknown keys, wrong types and missing files are named precisely."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcare.config import describe_keys, load_config, parse_config
from fedcare.core import ConfigError


def test_minimal_config_gets_defaults() -> None:
    cfg = parse_config({"data": {"source": "builtin"}})
    assert cfg.strategy.name == "fedavg" and cfg.study.rounds == 10


def test_unknown_key_is_named_with_its_path() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'strategy.lerning_rate'"):
        parse_config({"data": {"source": "builtin"},
                      "strategy": {"name": "fedavg", "lerning_rate": 1}})


def test_wrong_type_is_named_with_value() -> None:
    with pytest.raises(ConfigError, match=r"'study.rounds'.*'ten'"):
        parse_config({"data": {"source": "builtin"}, "study": {"rounds": "ten"}})


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"data": {"source": "builtin", "sites": 0}, "train": {"lr": -1},
                      "bogus": {}})
    assert len(info.value.problems) == 3


def test_strategy_specific_keys_belong_to_their_strategy() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'strategy\.mu'"):
        parse_config({"data": {"source": "builtin"}, "strategy": {"name": "fedavg", "mu": 0.1}})
    cfg = parse_config({"data": {"source": "builtin"}, "strategy": {"name": "fedprox", "mu": 1}})
    assert cfg.strategy.mu == 1  # type: ignore[union-attr]


def test_unknown_strategy_and_source_list_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="fedavg"):
        parse_config({"data": {"source": "builtin"}, "strategy": {"name": "fedsomething"}})
    with pytest.raises(ConfigError, match="builtin"):
        parse_config({"data": {"source": "ftp"}})


def test_toml_and_yaml_files_resolve_paths_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(
        '[data]\nsource = "files"\nlabel = "y"\n[[data.site]]\nname = "a"\npath = "a.csv"\n')
    cfg = load_config(tmp_path / "s.toml")
    assert cfg.data.site[0].path == tmp_path / "a.csv"  # type: ignore[union-attr]
    (tmp_path / "s.yaml").write_text("data:\n  source: builtin\nstudy:\n  rounds: 3\n")
    assert load_config(tmp_path / "s.yaml").study.rounds == 3


def test_missing_unparseable_and_wrong_suffix_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[data\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(tmp_path / "bad.toml")
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"\.toml"):
        load_config(tmp_path / "c.json")


def test_every_key_is_documented() -> None:
    rows = describe_keys()
    assert all(desc for _, _, desc in rows)
    keys = {k for k, _, _ in rows}
    assert {"study.rounds", "strategy.mu", "strategy.server_lr", "run.workers",
            "data[source=files].site"} <= keys
