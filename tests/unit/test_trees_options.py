"""Tree hyper-parameters: XGBoost's names, bounded, refused with the parameter and its range."""

from __future__ import annotations

import pytest

from fedcare.core.errors import ConfigError
from fedcare.trees.options import TreeOptions, check_bins_vs_rows, histogram_floats, tree_options


def test_defaults_are_xgboosts() -> None:
    o = tree_options()
    assert (o.objective, o.n_trees, o.max_depth, o.learning_rate, o.reg_lambda, o.gamma,
            o.min_child_weight, o.max_bin, o.sketch_bins, o.base_score) == (
        "binary:logistic", 50, 4, 0.3, 1.0, 0.0, 1.0, 64, 1024, None)


@pytest.mark.parametrize(("key", "value", "valid"), [
    ("max_depth", 0, "[1, 10]"),
    ("max_depth", 11, "[1, 10]"),
    ("learning_rate", 0, "(0, 1]"),
    ("learning_rate", -0.1, "(0, 1]"),
    ("learning_rate", 1.5, "(0, 1]"),
    ("n_trees", 0, "[1, 2000]"),
    ("n_trees", 2001, "[1, 2000]"),
    ("reg_lambda", -1, "[0, 1e+06]"),
    ("gamma", -0.5, "[0, 1e+06]"),
    ("min_child_weight", 1e7, "[0, 1e+06]"),
    ("max_bin", 1, "[2, 1024]"),
    ("max_bin", 1025, "[2, 1024]"),
])
def test_out_of_range_names_parameter_and_range(key: str, value: float, valid: str) -> None:
    with pytest.raises(ConfigError) as err:
        tree_options(**{key: value})
    assert key in str(err.value) and valid in str(err.value) and str(value) in str(err.value)


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_refused(value: float) -> None:
    with pytest.raises(ConfigError, match="learning_rate"):
        tree_options(learning_rate=value)


def test_unknown_key_and_objective_refused() -> None:
    with pytest.raises(ConfigError, match=r"no option 'eta'.*learning_rate"):
        tree_options(eta=0.1)
    with pytest.raises(ConfigError, match="objective"):
        tree_options(objective="multi:softmax")


def test_logistic_base_score_must_be_a_probability() -> None:
    with pytest.raises(ConfigError, match="base_score"):
        tree_options(base_score=1.0)
    assert tree_options(objective="reg:squarederror", base_score=150.0).base_score == 150.0


def test_sketch_must_be_finer_than_bins() -> None:
    with pytest.raises(ConfigError, match="sketch_bins=100 must be at least max_bin=256"):
        tree_options(max_bin=256, sketch_bins=100)


def test_options_are_frozen() -> None:
    with pytest.raises(Exception, match="frozen"):
        TreeOptions().max_depth = 3  # type: ignore[misc]


def test_more_bins_than_rows_refused() -> None:
    o = tree_options(max_bin=64)
    check_bins_vs_rows(o, 64)
    with pytest.raises(ConfigError, match="max_bin = 64 is more than the 63 rows of site 'b'"):
        check_bins_vs_rows(o, 63, site="b")


def test_histogram_size() -> None:
    assert histogram_floats(tree_options(max_depth=3, max_bin=7), 5) == 4 * 5 * 8 * 2


def test_public_api_surface() -> None:
    import fedcare.trees as trees

    assert sorted(trees.__all__) == sorted([
        "Ensemble", "TreeOptions", "base_margin", "bin_matrix", "check_bins_vs_rows",
        "cut_points", "grad_hess", "grow_level", "initial_base_score", "level_histograms",
        "local_fine_counts", "local_moments", "local_ranges", "merge_ranges", "moment_grid",
        "route_rows", "tree_margin", "tree_options", "with_siblings"])
    assert all(callable(getattr(trees, name)) for name in trees.__all__)
