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


# ------------------------------------------------------------------------------ [privacy]
def _dp(**privacy: object) -> dict:
    return {"data": {"source": "builtin"}, "privacy": privacy}


#: Content hashes computed by fedcare before strategies and models declared their own options
#: (d53ce2e): sites approve studies by these, so a refactor of the schema must not move them.
_APPROVED_HASHES = [
    ({"data": {"source": "builtin"}},
     "5214ab8456660fb1fcf118d9ddb50f6b5d896dc3bfbaa6b190b92e1be3a8ed42"),
    ({"data": {"source": "builtin"}, "model": {"name": "mlp", "hidden": [32]}},
     "d5c6fc58f1960501589975193976bebb6b7d93ea5edf0ea7ade086e5ee7c2c72"),
    ({"data": {"source": "builtin"}, "model": {"name": "mlp", "hidden": 16, "dropout": 0.1}},
     "0097890447d9fb96d4d176f70e6475fab0b186b24080ff84417b26303b72637e"),
    ({"data": {"source": "builtin"}, "model": {"name": "cnn", "channels": [8, 16]}},
     "b2f3c814a01745c374038af9c9de696fe26056f20d0bcc7411eb5552f9cff525"),
    ({"data": {"source": "builtin"}, "model": {"name": "lstm", "hidden": 32, "layers": 2}},
     "783d1a221681309f88b56929dcc49f8ecd185994310a4c0715b3d25d305fa95a"),
    ({"data": {"source": "builtin"}, "model": {"name": "transformer", "d_model": 16,
                                               "heads": 2}},
     "377cb34d21d000b28771865997f9af4361d246e0b501dc3c0da1bcb4fa8a2671"),
    ({"data": {"source": "builtin"}, "model": {"name": "sgd_linear"}},
     "01ecce416d6f3e59e980b228ac2b40dcd41aa6179a6adc68c1207b5ef16418b0"),
    ({"data": {"source": "builtin"}, "strategy": {"name": "fedprox", "mu": 0.1}},
     "2091f4e80833a9d4eb0a3201642317ef3af630f98e771c657d804148ea78f853"),
    ({"data": {"source": "builtin"}, "strategy": {"name": "fedadam", "server_lr": 0.1}},
     "b461e9ca9b1c8ab8a04162276e8addb8602747ef57be94cdc81b1e3d091d7941"),
    ({"data": {"source": "builtin"}, "strategy": {"name": "scaffold"}},
     "432cd0367faea8a468573c1f7ced1ebecc360fb852a2b94481a0e16a865d6c6c"),
    # A study with secure aggregation hashes differently since its survivor threshold became
    # derived from strategy.min_completed (audit F5; was 254b6c0e...): what it does changed
    # (a 3-site round now survives a dropout), so its sites must approve it again.
    ({"data": {"source": "federation", "dataset": "x", "label": "y", "features": ["a"]},
      "secure_aggregation": {"protocol": "secagg"},
      "privacy": {"mode": "dp_fedavg_distributed", "target_epsilon": 3.0}},
     "68904b5ea789b65ed2b8781c18b74aa52b75a20565e1f0587f8cd9315add406d"),
]


@pytest.mark.parametrize(("raw", "approved"), _APPROVED_HASHES)
def test_content_hashes_sites_approved_are_unchanged(raw: dict, approved: str) -> None:
    from fedcare.config import content_hash

    assert content_hash(parse_config(raw)) == approved


def test_privacy_defaults_to_none_and_keeps_the_pre_dp_content_hash() -> None:
    from fedcare.config import content_hash
    from fedcare.engine.assembly import privacy_spec

    cfg = parse_config({"data": {"source": "builtin"}})
    assert cfg.privacy.mode == "none" and privacy_spec(cfg) is None
    assert content_hash(cfg) == _APPROVED_HASHES[0][1]  # as before DP existed
    assert content_hash(parse_config(_dp(mode="dp_fedavg_central", noise_multiplier=1.0))) \
        != content_hash(cfg)
    secure = parse_config({"data": {"source": "builtin"},
                           "secure_aggregation": {"protocol": "secagg"}})
    assert content_hash(secure) != content_hash(cfg)


def test_privacy_needs_exactly_one_noise_source() -> None:
    for bad in ({"mode": "dp_sgd"}, {"mode": "dp_sgd", "noise_multiplier": 1.0,
                                     "target_epsilon": 3.0}):
        with pytest.raises(ConfigError, match=r"exactly one of privacy\.noise_multiplier"):
            parse_config(_dp(**bad))


@pytest.mark.parametrize(("privacy", "key"), [
    ({"mode": "dp_sgd", "noise_multiplier": 1.0, "clip": 0}, "privacy.clip"),
    ({"mode": "dp_sgd", "noise_multiplier": float("nan")}, "privacy.noise_multiplier"),
    ({"mode": "dp_sgd", "noise_multiplier": -1.0}, "privacy.noise_multiplier"),
    ({"mode": "dp_sgd", "target_epsilon": float("inf")}, "privacy.target_epsilon"),
    ({"mode": "dp_sgd", "noise_multiplier": 1.0, "delta": 1.0}, "privacy.delta"),
    ({"mode": "dp_magic", "noise_multiplier": 1.0}, "privacy.mode"),
    ({"mode": "dp_sgd", "noise_multiplier": 1.0, "accountant": "moments"}, "privacy.accountant"),
    ({"mode": "dp_sgd", "noise_multiplier": 1.0, "epsilon": 1}, "privacy.epsilon"),
])
def test_privacy_errors_name_the_key(privacy: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(_dp(**privacy))


def test_privacy_cross_section_rules() -> None:
    with pytest.raises(ConfigError, match=r"dp_sgd needs model\.name in logreg, mlp, cnn"):
        parse_config({**_dp(mode="dp_sgd", noise_multiplier=1.0), "model": {"name": "lstm"}})
    with pytest.raises(ConfigError, match="scaffold"):
        parse_config({**_dp(mode="dp_fedavg_central", noise_multiplier=1.0),
                      "strategy": {"name": "scaffold"}})
    with pytest.raises(ConfigError, match="needs secure_aggregation"):
        parse_config(_dp(mode="dp_fedavg_distributed", noise_multiplier=1.0))
    cfg = parse_config({**_dp(mode="dp_fedavg_distributed", noise_multiplier=1.0),
                        "secure_aggregation": {"protocol": "secagg"}})
    assert cfg.privacy.mode == "dp_fedavg_distributed"


def test_derive_noise_budget_first() -> None:
    from fedcare.engine.assembly import derive_noise, privacy_spec
    from fedcare.privacy.dp import PrivacyBudgetError, epsilon

    given = parse_config(_dp(mode="dp_sgd", noise_multiplier=1.3))
    assert derive_noise(given, 100) == 1.3
    cfg = parse_config({**_dp(mode="dp_fedavg_central", target_epsilon=5.0, accountant="rdp"),
                        "study": {"rounds": 5}})
    z = derive_noise(cfg)
    assert epsilon(z, 1.0, 5, 1e-5, "rdp") <= 5.0
    spec = privacy_spec(cfg)
    assert spec is not None and spec.noise_multiplier == z and spec.mechanism == "dp_fedavg_central"
    sgd = parse_config({**_dp(mode="dp_sgd", target_epsilon=4.0, accountant="rdp"),
                        "study": {"rounds": 2}, "train": {"batch_size": 50, "local_epochs": 1}})
    with pytest.raises(ConfigError, match="row count"):
        derive_noise(sgd)
    z_small, z_big = derive_noise(sgd, 50), derive_noise(sgd, 100)  # q = 1 vs q = 0.5
    assert epsilon(z_big, 0.5, 4, 1e-5, "rdp") <= 4.0 and z_small != z_big
    hopeless = parse_config({**_dp(mode="dp_fedavg_central", target_epsilon=1e-4, delta=1e-12,
                                   accountant="rdp"), "study": {"rounds": 100_000}})
    with pytest.raises(PrivacyBudgetError, match="cannot be met"):
        derive_noise(hopeless)
    with pytest.raises(ConfigError, match="'none'"):
        derive_noise(parse_config({"data": {"source": "builtin"}}))


def test_privacy_keys_are_in_the_reference() -> None:
    keys = {row[0] for row in describe_keys()}
    assert {"privacy.mode", "privacy.clip", "privacy.noise_multiplier", "privacy.target_epsilon",
            "privacy.delta", "privacy.accountant"} <= keys
