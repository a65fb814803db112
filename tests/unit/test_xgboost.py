"""Federated XGBoost's pieces: the engine's state and steps (fedcare.trees.rounds, on the
trees core), the learner, the strategy, the config rules and the XGBoost model file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedcare.config import content_hash, parse_config
from fedcare.core.dataset import TaskType
from fedcare.core.errors import ConfigError, ValidationError
from fedcare.core.messages import TrainConfig, UpdateKind
from fedcare.learners.options import check_bins_vs_rows, model_options
from fedcare.learners.xgboost import SUMS_ONLY, XGBoostLearner
from fedcare.strategies import UpdateStack, build_strategy
from fedcare.strategies.xgboost import SUMS_ONLY as STRATEGY_SUMS_ONLY
from fedcare.strategies.xgboost import XGBoostStrategyOptions
from fedcare.trees import TreeOptions, rounds

xgb = pytest.importorskip("xgboost")


def _data(n: int = 1500, f: int = 4, seed: int = 0, missing: float = 0.05
          ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, f))
    signal = x[:, 0] + 0.7 * x[:, 1] ** 2 - 0.5 * x[:, 2] + rng.normal(scale=0.6, size=n)
    y = (signal > 0.5).astype(float)
    x[rng.random((n, f)) < missing] = np.nan
    return x, y


def _options(**over: object) -> TreeOptions:
    base = {"n_trees": 6, "max_depth": 3, "max_bin": 16, "sketch_bins": 512}
    return TreeOptions(**{**base, **over})  # type: ignore[arg-type]


def _grow(options: TreeOptions, parts: list[tuple[np.ndarray, np.ndarray]]
          ) -> dict[str, np.ndarray]:
    state = rounds.initial_state(options, parts[0][0].shape[1])
    for _ in range(1 + options.n_trees * options.max_depth):
        sums = [rounds.site_sums(state, x, y, options) for x, y in parts]
        state = rounds.advance(state, {k: sum(s[k] for s in sums) for k in rounds.SUMS},
                               options)
    return state


def test_sites_summing_their_histograms_grow_the_pooled_model() -> None:
    x, y = _data()
    pooled = _grow(_options(), [(x, y)])
    split = _grow(_options(), [(x[:300], y[:300]), (x[300:1100], y[300:1100]),
                               (x[1100:], y[1100:])])
    for k in pooled:
        np.testing.assert_allclose(split[k], pooled[k], rtol=1e-9, atol=1e-9, err_msg=k)
    assert rounds.complete_trees(pooled) == 6
    assert rounds.options_of(pooled) == _options()


def test_the_ensemble_scores_close_to_xgboost_on_the_same_data() -> None:
    from sklearn.metrics import roc_auc_score

    x, y = _data(seed=1)
    xt, yt = _data(seed=2)
    ours = _grow(_options(n_trees=10), [(x[:700], y[:700]), (x[700:], y[700:])])
    ref = xgb.train({"max_depth": 3, "eta": 0.3, "objective": "binary:logistic",
                     "max_bin": 16, "tree_method": "hist"}, xgb.DMatrix(x, label=y), 10)
    auc_ours = roc_auc_score(yt, rounds.predict_margin(ours, xt))
    auc_ref = roc_auc_score(yt, ref.predict(xgb.DMatrix(xt)))
    assert auc_ours > 0.85 and abs(auc_ours - auc_ref) < 0.02, (auc_ours, auc_ref)


def test_the_xgboost_file_takes_raw_features(tmp_path: Path) -> None:
    x, y = _data(seed=4)
    state = _grow(_options(), [(x, y)])
    mean, std = np.array([10.0, -2.0, 0.5, 100.0]), np.array([2.0, 0.5, 3.0, 40.0])
    path = tmp_path / "model.xgb.json"
    raw_model = rounds.raw_scale(rounds.ensemble(state), mean, std)
    path.write_bytes(raw_model.to_xgboost_json())
    booster = xgb.Booster(model_file=str(path))
    raw = x * std + mean  # what a user hands the booster: raw values, NaN kept
    got = booster.predict(xgb.DMatrix(raw))
    want = 1.0 / (1.0 + np.exp(-rounds.predict_margin(state, x)))
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert booster.num_boosted_rounds() == 6


def test_regression_and_a_given_base_score() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(600, 2))
    y = 3 * x[:, 0] + rng.normal(scale=0.1, size=600) + 10
    state = _grow(_options(objective="reg:squarederror", n_trees=20), [(x, y)])
    assert state["base_score"][0] == pytest.approx(y.mean(), rel=1e-6)
    assert np.sqrt(np.mean((rounds.predict_margin(state, x) - y) ** 2)) < 1.0
    given = _options(base_score=0.25)
    start = rounds.initial_state(given, 2)
    after = rounds.advance(start, rounds.site_sums(start, x, (y > 10).astype(float), given))
    assert after["base_score"][0] == pytest.approx(0.25)


def _learner(**options: object) -> XGBoostLearner:
    opts = model_options("xgboost", {"n_trees": 3, "max_depth": 2, "max_bin": 8,
                                     "sketch_bins": 64, **options})
    return XGBoostLearner(4, TaskType.BINARY, opts)  # type: ignore[arg-type]


def test_a_federated_site_sends_its_sums_per_row_and_the_state_unchanged() -> None:
    learner = _learner()
    x, y = _data(n=200)
    start = learner.initial_parameters()
    fit = learner.fit(start, x, y, TrainConfig(), seed=0, correction=SUMS_ONLY)
    assert fit.num_examples == 200
    sums = rounds.site_sums(dict(start.items()), x, y, learner.options)
    for k in start:
        want = sums[k] / 200 if k in rounds.SUMS else start[k]
        np.testing.assert_array_equal(fit.parameters[k], want)
    alone = learner.fit(start, x, y, TrainConfig(), seed=0)  # a baseline: the step itself
    assert alone.parameters["phase"][0] == rounds.GROW
    assert set(STRATEGY_SUMS_ONLY) == set(SUMS_ONLY)  # the two halves agree on the marker


def test_the_strategy_turns_the_weighted_mean_back_into_sums() -> None:
    learner = _learner()
    start = learner.initial_parameters()
    strategy = build_strategy(XGBoostStrategyOptions(), num_sites=2)
    parts = [_data(n=120, seed=6), _data(n=380, seed=7)]
    stack = UpdateStack(start.spec, capacity=2)
    for i, (x, y) in enumerate(parts):
        fit = learner.fit(start, x, y, TrainConfig(), seed=0, correction=SUMS_ONLY)
        stack.add(f"s{i}", fit.parameters, fit.num_examples)
    new = strategy.aggregate(1, start, stack, UpdateKind.FULL, {})
    sums = [rounds.site_sums(dict(start.items()), x, y, learner.options) for x, y in parts]
    want = rounds.advance(dict(start.items()), {k: sums[0][k] + sums[1][k]
                                                for k in rounds.SUMS})
    for k in want:
        np.testing.assert_allclose(new[k], want[k], rtol=1e-9, err_msg=k)
    with pytest.raises(ValidationError, match="not model differences"):
        strategy.aggregate(1, start, stack, UpdateKind.DELTA, {})


def test_the_learner_refuses_more_bins_than_rows_and_other_tasks() -> None:
    learner = _learner(max_bin=64)
    x, y = _data(n=40)
    with pytest.raises(ConfigError, match=r"'model.max_bin' = 64 .* 40 training rows"):
        learner.fit(learner.initial_parameters(), x, y, TrainConfig(), seed=0)
    opts = model_options("xgboost", {})
    with pytest.raises(ConfigError, match="binary classification and regression"):
        XGBoostLearner(3, TaskType.MULTICLASS, opts)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"'model\.objective'"):
        XGBoostLearner(3, TaskType.REGRESSION, opts)  # type: ignore[arg-type]
    assert check_bins_vs_rows(opts, 10, "x") is not None
    assert check_bins_vs_rows(opts, 100, "x") is None
    assert check_bins_vs_rows(model_options("logreg"), 1, "x") is None


def _study(**model: object) -> dict:
    return {"data": {"source": "builtin"}, "model": {"name": "xgboost", **model},
            "strategy": {"name": "xgboost"}}


def test_the_model_fixes_the_study_rounds() -> None:
    cfg = parse_config(_study(n_trees=5, max_depth=3))
    assert cfg.study.rounds == 16
    assert parse_config({**_study(n_trees=5, max_depth=3), "study": {"rounds": 16}}
                        ).study.rounds == 16
    with pytest.raises(ConfigError, match=r"'study.rounds': model xgboost runs exactly 16"):
        parse_config({**_study(n_trees=5, max_depth=3), "study": {"rounds": 10}})


@pytest.mark.parametrize(("raw", "message"), [
    (_study(max_depth=0), r"'model.max_depth'.*greater than or equal to 1"),
    (_study(learning_rate=0), r"'model.learning_rate'.*greater than 0"),
    (_study(max_bin=1), r"'model.max_bin'.*greater than or equal to 2"),
    (_study(max_bin=64, sketch_bins=32), r"sketch_bins=32 must be at least max_bin=64"),
    ({"data": {"source": "builtin"}, "model": {"name": "xgboost"}},
     r"'strategy.name': model xgboost is aggregated by strategy xgboost only"),
    ({"data": {"source": "builtin"}, "strategy": {"name": "xgboost"}},
     "strategy xgboost aggregates model xgboost only, not logreg"),
    ({**_study(), "privacy": {"mode": "dp_fedavg_central", "noise_multiplier": 1.0}},
     "differential privacy is not supported for xgboost studies: "),
    ({**_study(), "data": {"source": "builtin", "standardize": False}},
     "'data.standardize': model xgboost bins"),
])
def test_bad_tree_studies_are_refused_when_read(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


def test_every_tree_option_is_in_the_content_hash_and_other_hashes_do_not_move() -> None:
    base = content_hash(parse_config(_study()))
    assert content_hash(parse_config(_study(max_depth=5))) != base
    assert content_hash(parse_config(_study(reg_lambda=2.0))) != base
    assert content_hash(parse_config(_study(max_depth=4))) == base  # 4 is the default
    assert content_hash(parse_config(_study(sketch_bins=2048))) != base


def test_simulate_refuses_more_bins_than_a_site_has_rows_with_exit_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedcare.cli.main import app

    cfg = tmp_path / "study.toml"
    cfg.write_text('[data]\nsource = "builtin"\ndataset = "breast_cancer"\nsites = 4\n'
                   '[model]\nname = "xgboost"\nn_trees = 1\nmax_bin = 500\n'
                   '[strategy]\nname = "xgboost"\n')
    res = CliRunner().invoke(app, ["simulate", str(cfg), "-o", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    assert "model.max_bin" in res.output and "training rows" in res.output
    cfg.write_text(cfg.read_text().replace("max_bin = 500", "max_depth = 0"))
    res = CliRunner().invoke(app, ["simulate", str(cfg), "-o", str(tmp_path / "out")])
    assert res.exit_code == 2 and "max_depth" in res.output, res.output
