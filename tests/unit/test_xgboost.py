"""Federated XGBoost's pieces: the numeric core (fedcare.core.gbt), the learner, the
strategy, the config rules and the XGBoost model file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedcare.config import content_hash, parse_config
from fedcare.core import gbt
from fedcare.core.dataset import TaskType
from fedcare.core.errors import ConfigError, ValidationError
from fedcare.core.messages import TrainConfig, UpdateKind
from fedcare.learners.options import check_bins_vs_rows, model_options
from fedcare.learners.xgboost import XGBoostLearner
from fedcare.strategies import UpdateStack, build_strategy
from fedcare.strategies.xgboost import SUMS_ONLY, XGBoostStrategyOptions

xgb = pytest.importorskip("xgboost")


def _data(n: int = 1500, f: int = 4, seed: int = 0, missing: float = 0.05
          ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, f))
    signal = x[:, 0] + 0.7 * x[:, 1] ** 2 - 0.5 * x[:, 2] + rng.normal(scale=0.6, size=n)
    y = (signal > 0.5).astype(float)
    x[rng.random((n, f)) < missing] = np.nan
    return x, y


def _hyper(f: int = 4, **over: object) -> gbt.Hyper:
    base = {"n_features": f, "n_trees": 6, "max_depth": 3, "max_bin": 16,
            "learning_rate": 0.3, "reg_lambda": 1.0, "gamma": 0.0, "min_child_weight": 1.0}
    return gbt.Hyper(**{**base, **over})  # type: ignore[arg-type]


def _grow(state: dict[str, np.ndarray], parts: list[tuple[np.ndarray, np.ndarray]]
          ) -> dict[str, np.ndarray]:
    while state["cursor"][0] != gbt.DONE:
        sums = [gbt.site_sums(state, x, y) for x, y in parts]
        state = gbt.advance(state, {k: sum(s[k] for s in sums) for k in gbt.SUMS})
    return state


def test_sites_summing_their_histograms_grow_the_pooled_model() -> None:
    x, y = _data()
    pooled = _grow(gbt.initial_state(_hyper()), [(x, y)])
    split = _grow(gbt.initial_state(_hyper()),
                  [(x[:300], y[:300]), (x[300:1100], y[300:1100]), (x[1100:], y[1100:])])
    for k in pooled:
        np.testing.assert_allclose(split[k], pooled[k], rtol=1e-9, atol=1e-9, err_msg=k)
    assert gbt.complete_trees(pooled) == 6


def test_the_ensemble_scores_close_to_xgboost_on_the_same_data() -> None:
    from sklearn.metrics import roc_auc_score

    x, y = _data(seed=1)
    xt, yt = _data(seed=2)
    ours = _grow(gbt.initial_state(_hyper(n_trees=10)), [(x[:700], y[:700]), (x[700:], y[700:])])
    ref = xgb.train({"max_depth": 3, "eta": 0.3, "objective": "binary:logistic",
                     "max_bin": 16, "tree_method": "hist"}, xgb.DMatrix(x, label=y), 10)
    auc_ours = roc_auc_score(yt, gbt.predict_margin(ours, xt))
    auc_ref = roc_auc_score(yt, ref.predict(xgb.DMatrix(xt)))
    assert auc_ours > 0.85 and abs(auc_ours - auc_ref) < 0.02, (auc_ours, auc_ref)


def test_missing_values_take_the_learned_default_direction() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(800, 1))
    y = (x[:, 0] > 0).astype(float)
    gone = rng.random(800) < 0.3
    x[gone & (y == 1), 0] = np.nan  # missing means "positive" here
    state = _grow(gbt.initial_state(_hyper(f=1, n_trees=3, max_depth=1)), [(x, y)])
    assert state["default_left"][0, 0] == 0.0  # positives sit right of the split
    margin = gbt.predict_margin(state, np.array([[np.nan], [-2.0]]))
    assert margin[0] > 0 > margin[1]


def test_the_xgboost_file_loads_in_a_booster_and_predicts_the_same(tmp_path: Path) -> None:
    x, y = _data(seed=4)
    state = _grow(gbt.initial_state(_hyper()), [(x, y)])
    mean, std = np.array([10.0, -2.0, 0.5, 100.0]), np.array([2.0, 0.5, 3.0, 40.0])
    path = tmp_path / "model.xgb.json"
    path.write_text(json.dumps(gbt.to_xgboost_json(state, mean=mean, std=std)))
    booster = xgb.Booster(model_file=str(path))
    raw = x * std + mean  # what a user hands the booster: raw values, NaN kept
    got = booster.predict(xgb.DMatrix(raw))
    want = 1.0 / (1.0 + np.exp(-gbt.predict_margin(state, x)))
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert booster.num_boosted_rounds() == 6


def test_regression_objective_and_a_given_base_score() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(600, 2))
    y = 3 * x[:, 0] + rng.normal(scale=0.1, size=600) + 10
    state = _grow(gbt.initial_state(_hyper(f=2, objective="reg:squarederror", n_trees=20)),
                  [(x, y)])
    assert state["cursor"][3] == pytest.approx(y.mean())
    assert np.sqrt(np.mean((gbt.predict_margin(state, x) - y) ** 2)) < 1.0
    given = gbt.advance(gbt.initial_state(_hyper(f=2, base_score=0.25)),
                        gbt.site_sums(gbt.initial_state(_hyper(f=2, base_score=0.25)), x,
                                      (y > 10).astype(float)))
    assert given["cursor"][3] == pytest.approx(np.log(0.25 / 0.75))


def _learner(**options: object) -> XGBoostLearner:
    opts = model_options("xgboost", {"n_trees": 3, "max_depth": 2, "max_bin": 8, **options})
    return XGBoostLearner(4, TaskType.BINARY, opts)  # type: ignore[arg-type]


def test_a_federated_site_sends_its_sums_per_row_and_the_state_unchanged() -> None:
    learner = _learner()
    x, y = _data(n=200)
    start = learner.initial_parameters()
    fit = learner.fit(start, x, y, TrainConfig(), seed=0, correction=SUMS_ONLY)
    assert fit.num_examples == 200
    sums = gbt.site_sums(dict(start.items()), x, y)
    for k in start:
        want = sums[k] / 200 if k in gbt.SUMS else start[k]
        np.testing.assert_array_equal(fit.parameters[k], want)
    alone = learner.fit(start, x, y, TrainConfig(), seed=0)  # a baseline: the step itself
    assert alone.parameters["cursor"][0] == gbt.GROW


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
    sums = [gbt.site_sums(dict(start.items()), x, y) for x, y in parts]
    want = gbt.advance(dict(start.items()), {k: sums[0][k] + sums[1][k] for k in gbt.SUMS})
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
