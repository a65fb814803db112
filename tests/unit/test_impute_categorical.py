"""Missing values and categorical columns (first-use item 9).

A site's table with missing values and a text column used to be a hard error. With
``data.impute = "mean"`` and ``data.categorical`` the federation fills missing values with the
mean of the observed values and one-hot encodes categories against one level list, both
computed in the round-0 statistics exchange from the sites' sums and level reports (no row
pooled; rare levels suppressed); rows without a label are dropped and counted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedcare.config import content_hash, parse_config
from fedcare.core.errors import ConfigError, DataError, FedcareError
from fedcare.data.prepare import (
    MIN_LEVEL_ROWS,
    Columns,
    array_text,
    encode,
    federation_levels,
    load_raw_table,
    reported_levels,
)
from fedcare.data.standardize import (
    bounded_grid_sums,
    bounded_sensitivity,
    impute_sums,
    site_sums_observed,
)
from fedcare.sim.runner import _Run, simulate

LEVELS = ("current", "former", "never")


def _site_frame(seed: int, n: int = 120, *, missing: float = 0.1, extra_level: str | None = None
                ) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.normal(60, 10, n)
    smoking = rng.choice(LEVELS, n)
    logit = 0.15 * (age - 60) + 3.0 * (smoking == "current") - 1.0
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    df = pd.DataFrame({"age": age, "sbp": rng.normal(130, 15, n), "smoking": smoking,
                       "y": y})
    df.loc[rng.random(n) < missing, "age"] = np.nan
    df.loc[rng.random(n) < 0.05, "smoking"] = None
    df.loc[:2, "y"] = np.nan  # three rows without a label
    if extra_level is not None:
        df.loc[3:5, "smoking"] = extra_level  # 3 rows: below the small-cell threshold
    return df


def _files(tmp_path: Path, frames: list[pd.DataFrame]) -> list[dict[str, str]]:
    sites = []
    for i, df in enumerate(frames):
        path = tmp_path / f"site{i}.csv"
        df.to_csv(path, index=False)
        sites.append({"name": f"h{i}", "path": str(path)})
    return sites


def _study(sites: list[dict[str, str]], **data: object) -> dict:
    return {"study": {"rounds": 4, "seed": 3},
            "data": {"source": "files", "label": "y", "site": sites, "impute": "mean",
                     "categorical": ["smoking"], "max_levels": 4, **data},
            "model": {"name": "logreg"}, "train": {"lr": 0.1, "local_epochs": 3},
            "baselines": {"local": True, "centralized": True},
            "run": {"workers": 1}}


def test_a_table_with_missing_values_and_text_used_to_be_refused(tmp_path: Path) -> None:
    sites = _files(tmp_path, [_site_frame(0), _site_frame(1)])
    cfg = _study(sites)
    for key in ("impute", "categorical", "max_levels"):
        del cfg["data"][key]
    with pytest.raises(DataError, match="not numeric"):
        simulate(cfg, output_dir=None)


def test_mean_imputation_and_one_hot_levels_are_the_federations(tmp_path: Path) -> None:
    frames = [_site_frame(0), _site_frame(1), _site_frame(2, extra_level="pipe")]
    history = simulate(_study(_files(tmp_path, frames)), output_dir=None)

    norm = history.meta["normalizer"]
    # The fill value is the mean of every observed training value across the sites.
    run = _Run(parse_config(_study(_files(tmp_path, frames))), None, None, False, False)
    run.prepare()
    ages = np.concatenate([s.x_train[:, 0] for s in run.sites]).astype(np.float64)
    assert norm["fill"][0] == pytest.approx(np.nanmean(ages), rel=1e-9)
    # After imputation the standardization's mean is that same value.
    assert norm["mean"][0] == pytest.approx(np.nanmean(ages), rel=1e-5)
    # The rare level ("pipe", 3 rows at one site) is suppressed; the list is sorted.
    assert array_text(np.asarray(norm["levels"])) == {"smoking": list(LEVELS)}
    # One numeric column each for age and sbp, max_levels one-hot columns for smoking.
    assert len(norm["mean"]) == 2 + 4
    # Rows without a label are dropped, and counted by reason.
    assert [s["rows_dropped"] for s in history.sites] == [{"missing label": 3}] * 3
    assert history.final["global_metrics"]["auc"] > 0.7  # it learned from both kinds
    assert set(history.baselines) == {"local", "centralized"}


def test_encoding_maps_each_sites_own_levels_onto_the_federation_list(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    pd.DataFrame({"smoking": ["never", None, "pipe", "current"], "age": [1.0, np.nan, 3, 4],
                  "y": [0, 1, 0, 1]}).to_csv(path, index=False)
    data = parse_config(_study([{"name": "a", "path": str(path)}])).data
    raw = load_raw_table(path, label="y", features=["age", "smoking"], site="a", data=data)
    assert raw.site.local_levels == {"smoking": ("current", "never", "pipe")}
    out = encode(raw.x, raw.site, np.array([2.5]), {"smoking": ["current", "former", "never"]})
    assert out.tolist() == [[1, 0, 0, 1, 0],   # never
                            [2.5, 0, 0, 0, 0],  # age filled, smoking missing: all zeros
                            [3, 0, 0, 0, 0],    # "pipe" is not on the list: all zeros
                            [4, 1, 0, 0, 0]]    # current


def test_a_site_reports_only_levels_held_by_enough_rows(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    n = MIN_LEVEL_ROWS
    pd.DataFrame({"c": ["a"] * n + ["b"] * (n - 1),
                  "y": ([0, 1] * n)[:2 * n - 1]}).to_csv(path, index=False)
    data = parse_config(_study([{"name": "a", "path": str(path)}],
                               categorical=["c"])).data
    raw = load_raw_table(path, label="y", features=["c"], site="a", data=data)
    assert reported_levels(raw.x, raw.site) == {"c": ["a"]}


def test_a_categorical_column_with_10000_levels_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "ids.csv"
    pd.DataFrame({"patient": [f"P{i:05d}" for i in range(10_000)], "age": 50.0,
                  "y": [0, 1] * 5000}).to_csv(path, index=False)
    sites = [{"name": "a", "path": str(path)}]
    with pytest.raises(DataError, match=r"'patient'.*10000 distinct values.*max_levels = 4"):
        simulate(_study(sites, categorical=["patient"]), output_dir=None)


def test_the_union_of_levels_past_max_levels_is_refused() -> None:
    cols = Columns(("c",), ("c",), max_levels=2)
    with pytest.raises(DataError, match=r"'c' has 3 levels across the sites.*spell"):
        federation_levels([{"c": ["a", "b"]}, {"c": ["B"]}], cols)


def test_a_column_missing_at_one_site_is_named(tmp_path: Path) -> None:
    frames = [_site_frame(0), _site_frame(1).drop(columns=["sbp"])]
    with pytest.raises(DataError, match=r"sbp") as info:
        simulate(_study(_files(tmp_path, frames), features=["age", "sbp", "smoking"]),
                 output_dir=None)
    assert info.value.site == "h1"


def test_a_feature_missing_at_every_site_cannot_be_imputed(tmp_path: Path) -> None:
    frames = [_site_frame(0).assign(sbp=np.nan), _site_frame(1).assign(sbp=np.nan)]
    with pytest.raises(FedcareError, match=r"no observed value at any site.*sbp"):
        simulate(_study(_files(tmp_path, frames)), output_dir=None)


def test_without_impute_a_missing_value_names_the_setting(tmp_path: Path) -> None:
    sites = _files(tmp_path, [_site_frame(0)])
    with pytest.raises(DataError, match=r"'age'.*data.impute"):
        simulate(_study(sites, impute="none"), output_dir=None)


def test_a_text_column_not_declared_categorical_says_so(tmp_path: Path) -> None:
    sites = _files(tmp_path, [_site_frame(0)])
    with pytest.raises(DataError, match=r"'smoking'.*data.categorical"):
        simulate(_study(sites, categorical=[]), output_dir=None)


def test_observed_sums_and_imputation_moments() -> None:
    x = np.array([[1.0, np.nan], [3.0, 4.0], [np.nan, 8.0]])
    n, s, q, m = site_sums_observed(x)
    assert (n, s.tolist(), q.tolist(), m.tolist()) == (3, [4, 12], [10, 80], [2, 2])
    fill, s2, q2 = impute_sums(n, s, q, m)
    filled = np.where(np.isnan(x), fill, x)
    assert fill.tolist() == [2, 6]
    np.testing.assert_allclose(s2, filled.sum(axis=0))
    np.testing.assert_allclose(q2, np.square(filled).sum(axis=0))


def test_dp_grid_sums_count_observed_values_within_the_stated_sensitivity() -> None:
    x = np.array([[0.5, np.nan], [np.nan, -1.0]])
    k = bounded_grid_sums(x, np.array([-1.0, -1.0]), np.array([1.0, 1.0]), 4, observed=True)
    one = 16
    assert k.tolist() == [2 * one, 8, -16, 4, 16, one, one]
    # One row's [1, u, u^2, m] over d features: sqrt(1 + 3d).
    assert bounded_sensitivity(2, observed=True) == pytest.approx(np.sqrt(7))
    with pytest.raises(ValueError, match="missing"):
        bounded_grid_sums(x, np.array([-1.0, -1.0]), np.array([1.0, 1.0]), 4)


def test_new_keys_at_their_defaults_keep_the_content_hash() -> None:
    base = {"data": {"source": "builtin"}}
    same = {"data": {"source": "builtin", "impute": "none", "categorical": [],
                     "max_levels": 20}}
    assert content_hash(parse_config(base)) == content_hash(parse_config(same))
    files = {"data": {"source": "files", "label": "y", "site": [{"name": "a", "path": "a"}],
                      "impute": "mean"}}
    assert content_hash(parse_config(files)) != content_hash(parse_config(
        {"data": {**files["data"], "impute": "none"}}))


@pytest.mark.parametrize(("data", "extra", "match"), [
    ({"categorical": ["smoking"]}, {"privacy": {"mode": "dp_fedavg_central",
                                                "noise_multiplier": 1.0}},
     r"'data.categorical'.*DP study"),
    ({"impute": "mean", "standardize": False},
     {"privacy": {"mode": "dp_fedavg_central", "noise_multiplier": 1.0}},
     r"'data.stats_clip'.*imputes"),
    ({"categorical": ["bmi"]}, {}, r"'data.categorical'.*not in data.features"),
])
def test_bad_settings_are_refused(data: dict, extra: dict, match: str) -> None:
    cfg = {"data": {"source": "federation", "dataset": "d", "label": "y",
                    "features": ["age", "smoking"], **data}, **extra}
    with pytest.raises(ConfigError, match=match):
        parse_config(cfg)


def test_a_networked_studys_model_width_counts_the_one_hot_columns() -> None:
    cfg = parse_config({"data": {"source": "federation", "dataset": "d", "label": "y",
                                 "features": ["age", "smoking", "sex"],
                                 "categorical": ["smoking", "sex"], "max_levels": 5}})
    assert cfg.data.input_width() == 1 + 5 + 5  # type: ignore[union-attr]


def test_a_secure_study_gets_the_same_fill_values_and_levels(tmp_path: Path) -> None:
    frames = [_site_frame(0), _site_frame(1), _site_frame(2)]
    plain = simulate(_study(_files(tmp_path, frames)), output_dir=None)
    cfg = _study(_files(tmp_path, frames))
    cfg["secure_aggregation"] = {"protocol": "secagg"}
    secure = simulate(cfg, output_dir=None)
    a, b = plain.meta["normalizer"], secure.meta["normalizer"]
    np.testing.assert_allclose(a["fill"], b["fill"], rtol=1e-9)
    np.testing.assert_allclose(a["std"], b["std"], rtol=1e-6)
    assert a["levels"] == b["levels"]


def test_a_dp_study_imputes_from_noised_clipped_sums_and_charges_them(tmp_path: Path) -> None:
    frames = [_site_frame(0), _site_frame(1), _site_frame(2)]
    cfg = _study(_files(tmp_path, frames), categorical=[], features=["age", "sbp"],
                 stats_clip={"age": [20, 100], "sbp": [80, 200]})
    cfg["privacy"] = {"mode": "dp_fedavg_central", "noise_multiplier": 1.0}
    cfg["baselines"] = {"local": False, "centralized": False}
    history = simulate(cfg, output_dir=None, force=True)
    fill = history.meta["normalizer"]["fill"]
    assert 20 <= fill[0] <= 100 and 80 <= fill[1] <= 200  # post-processed into the ranges
    assert history.meta["privacy"]["stats"]["round"] == 0  # the release is charged


def test_one_table_split_into_sites_imputes_and_encodes_too(tmp_path: Path) -> None:
    path = tmp_path / "all.csv"
    pd.concat([_site_frame(0), _site_frame(1), _site_frame(2)]).to_csv(path, index=False)
    cfg = _study([])
    cfg["data"] = {"source": "table", "path": str(path), "label": "y", "sites": 3,
                   "impute": "mean", "categorical": ["smoking"], "max_levels": 4}
    history = simulate(cfg, output_dir=None)
    assert array_text(np.asarray(history.meta["normalizer"]["levels"])) == {
        "smoking": list(LEVELS)}
    assert history.sites[0]["rows_dropped"] == {"missing label (whole table)": 9}
