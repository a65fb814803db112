from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedcare.core.errors import DataError
from fedcare.data import (
    Table,
    TaskType,
    check_same_features,
    encode_labels,
    infer_task,
    load_breast_cancer,
    load_table,
    make_synthetic,
)

SECRET = 987654.25  # a cell value that must never appear in an error message


def _frame() -> pd.DataFrame:
    return pd.DataFrame({"age": [61, 45, 70, 52], "bmi": [22.5, 31.0, 27.25, 24.0],
                         "outcome": ["yes", "no", "yes", "no"], "sbp": [120, 135, 150, 110]})


def _write(frame: pd.DataFrame, path: Path) -> Path:
    name = path.name
    if name.endswith((".parquet", ".pq")):
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)  # pandas gzips .csv.gz by suffix
    return path


@pytest.mark.parametrize("name", ["a.csv", "a.csv.gz", "a.parquet", "a.pq", "A.CSV"])
def test_reads_csv_and_parquet_with_raw_labels(tmp_path: Path, name: str) -> None:
    path = _write(_frame(), tmp_path / name)

    table = load_table(path, label="outcome", features=None, site="h1")

    assert table.feature_names == ("age", "bmi", "sbp")
    assert table.x.dtype == np.float32 and table.x.shape == (4, 3)
    np.testing.assert_allclose(table.x[:, 1], [22.5, 31.0, 27.25, 24.0])
    assert list(table.y) == ["yes", "no", "yes", "no"]


def test_requested_features_keep_requested_order(tmp_path: Path) -> None:
    path = _write(_frame(), tmp_path / "a.csv")

    table = load_table(str(path), label="outcome", features=["sbp", "age"], site="h1")

    assert table.feature_names == ("sbp", "age")
    np.testing.assert_array_equal(table.x[:, 0], [120, 135, 150, 110])


def test_bool_and_nullable_columns_are_numeric(tmp_path: Path) -> None:
    frame = pd.DataFrame({"flag": [True, False], "n": pd.array([1, 2], dtype="Int64"),
                          "y": pd.array([1, 0], dtype="Int64")})
    path = _write(frame, tmp_path / "a.parquet")

    table = load_table(path, label="y", features=None, site="h1")

    np.testing.assert_array_equal(table.x, [[1, 1], [0, 2]])
    assert table.y.dtype == np.int64


def _error(tmp_path: Path, frame_or_bytes: pd.DataFrame | bytes, name: str = "a.csv",
           **kwargs: object) -> DataError:
    path = tmp_path / name
    if isinstance(frame_or_bytes, bytes):
        path.write_bytes(frame_or_bytes)
    else:
        _write(frame_or_bytes, path)
    args = {"label": "outcome", "features": None, "site": "st-mary"} | kwargs
    with pytest.raises(DataError) as info:
        load_table(path, **args)  # type: ignore[arg-type]
    assert info.value.site == "st-mary" and "st-mary" in str(info.value)
    return info.value


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"st-mary.*does not exist.*check the path"):
        load_table(tmp_path / "nope.csv", label="y", features=None, site="st-mary")


def test_unknown_suffix(tmp_path: Path) -> None:
    err = _error(tmp_path, b"a,b\n1,2\n", name="a.xlsx")
    assert "a.xlsx" in str(err) and "CSV" in str(err) and "Parquet" in str(err)


@pytest.mark.parametrize("name,content", [
    ("a.parquet", b"this is not parquet at all"),
    ("a.csv.gz", b"not gzip data"),
    ("a.csv", b"a,b\n1,2\n\xff\xfe\x00bad"),
    ("a.csv", b'a,b\n1,"2\n'),
])
def test_corrupt_file(tmp_path: Path, name: str, content: bytes) -> None:
    err = _error(tmp_path, content, name=name)
    assert "cannot read" in str(err) and name in str(err) and "again" in str(err)


def test_truncated_gzip(tmp_path: Path) -> None:
    rows = "".join(f"{i},{i % 2}\n" for i in range(2000)).encode()
    full = gzip.compress(b"age,outcome\n" + rows)
    data = full[: len(full) // 2]
    err = _error(tmp_path, data, name="a.csv.gz")
    assert "cannot read" in str(err)


def test_empty_file(tmp_path: Path) -> None:
    err = _error(tmp_path, b"")
    assert "empty" in str(err)


def test_label_absent_lists_columns(tmp_path: Path) -> None:
    err = _error(tmp_path, _frame(), label="death")
    msg = str(err)
    assert "'death'" in msg and "'age'" in msg and "'sbp'" in msg and "data.label" in msg


def test_feature_absent(tmp_path: Path) -> None:
    err = _error(tmp_path, _frame(), features=["age", "hba1c"])
    assert "'hba1c'" in str(err) and "data.features" in str(err)


def test_label_listed_as_feature(tmp_path: Path) -> None:
    err = _error(tmp_path, _frame(), features=["age", "outcome"])
    assert "also listed as a feature" in str(err)


def test_duplicate_feature(tmp_path: Path) -> None:
    err = _error(tmp_path, _frame(), features=["age", "age"])
    assert "more than once" in str(err)


def test_no_features_besides_label(tmp_path: Path) -> None:
    err = _error(tmp_path, pd.DataFrame({"outcome": [1, 0]}))
    assert "no feature columns" in str(err)


def test_zero_rows(tmp_path: Path) -> None:
    err = _error(tmp_path, b"age,outcome\n")
    assert "zero rows" in str(err)


def test_non_numeric_features_are_named(tmp_path: Path) -> None:
    frame = _frame().assign(sex=["f", "m", "f", "m"], ward=["a", "b", "c", "d"])
    err = _error(tmp_path, frame)
    msg = str(err)
    assert "'sex'" in msg and "'ward'" in msg and "'age'" not in msg
    assert "not numeric" in msg and "encode" in msg and "drop them from data.features" in msg


def test_nan_label_counts_rows(tmp_path: Path) -> None:
    frame = _frame()
    frame.loc[[1, 3], "outcome"] = None
    err = _error(tmp_path, frame)
    assert "'outcome'" in str(err) and "2 row(s)" in str(err)


@pytest.mark.parametrize("name", ["a.csv", "a.parquet"])
def test_nan_and_inf_features_count_rows_and_name_columns(tmp_path: Path, name: str) -> None:
    frame = _frame().astype({"age": float, "sbp": float})
    frame["bmi"] = [SECRET, np.nan, 27.0, np.inf]
    frame.loc[3, "sbp"] = -np.inf
    err = _error(tmp_path, frame, name=name)
    msg = str(err)
    assert "2 row(s)" in msg and "'bmi'" in msg and "'sbp'" in msg and "'age'" not in msg
    assert "NaN" in msg and "infinite" in msg
    assert "987654" not in msg


def test_encode_labels_shares_one_vocabulary_across_sites() -> None:
    per_site = {"a": np.array(["yes", "no", "yes"], dtype=object),
                "b": np.array(["yes", "yes"], dtype=object),
                "c": np.array(["maybe", "no"])}

    encoded, vocab = encode_labels(per_site)

    assert vocab == ("maybe", "no", "yes")
    np.testing.assert_array_equal(encoded["a"], [2, 1, 2])
    np.testing.assert_array_equal(encoded["b"], [2, 2])
    np.testing.assert_array_equal(encoded["c"], [0, 1])
    assert all(v.dtype == np.int64 for v in encoded.values())


@pytest.mark.parametrize("a,b,vocab", [
    (np.array([True, False]), np.array([True]), (False, True)),
    (np.array([3, 7], dtype=np.int32), np.array([7, 5]), (3, 5, 7)),
    (np.array([1.0, 0.0]), np.array([1, 1]), (0.0, 1.0)),
])
def test_encode_labels_other_types(a: np.ndarray, b: np.ndarray, vocab: tuple) -> None:
    encoded, got = encode_labels({"a": a, "b": b})
    assert got == vocab
    assert [vocab[i] for i in encoded["b"]] == list(b)


def test_encode_labels_refuses_types_differing_between_sites() -> None:
    with pytest.raises(DataError, match=r"differ between sites.*a: text.*b: number"):
        encode_labels({"a": np.array(["0", "1"], dtype=object), "b": np.array([0, 1])})


def test_encode_labels_refuses_mixed_types_within_a_site() -> None:
    with pytest.raises(DataError, match=r"site a.*mix types"):
        encode_labels({"a": np.array(["0", 1], dtype=object)})


def _table(names: tuple[str, ...]) -> Table:
    return Table(np.zeros((1, len(names)), np.float32), np.zeros(1, np.int64), names)


def test_same_features_pass() -> None:
    check_same_features({"a": _table(("x", "y")), "b": _table(("x", "y"))})
    check_same_features({})


def test_different_features_name_sites_and_columns() -> None:
    tables = {"a": _table(("x", "y")), "b": _table(("x", "y")), "c": _table(("x", "z"))}
    with pytest.raises(DataError) as info:
        check_same_features(tables)
    msg = str(info.value)
    assert info.value.site == "c" and "'a'" in msg and "'y'" in msg and "'z'" in msg


def test_reordered_features_are_refused() -> None:
    with pytest.raises(DataError, match=r"different order.*\['x', 'y'\]"):
        check_same_features({"a": _table(("x", "y", "w")), "b": _table(("y", "x", "w"))})


@pytest.mark.parametrize("y,task,k", [
    (np.linspace(0, 1, 50), TaskType.REGRESSION, 0),
    (np.array([0, 1, 1, 0]), TaskType.BINARY, 2),
    (np.array(["no", "yes"], dtype=object), TaskType.BINARY, 2),
    (np.array([True, False]), TaskType.BINARY, 2),
    (np.array([0, 2, 1, 2]), TaskType.MULTICLASS, 3),
    (np.array([0.0, 1.0, 2.0, 1.0]), TaskType.MULTICLASS, 3),
])
def test_infer_task(y: np.ndarray, task: TaskType, k: int) -> None:
    assert infer_task(y) == (task, k)


@pytest.mark.parametrize("y,match", [
    (np.array([1, 1, 1]), "same label"),
    (np.array([]), "cannot infer"),
    (np.array([0.0, np.nan]), "NaN"),
])
def test_infer_task_errors(y: np.ndarray, match: str) -> None:
    with pytest.raises(DataError, match=match):
        infer_task(y)


def test_breast_cancer() -> None:
    table = load_breast_cancer()
    assert table.x.shape == (569, 30) and table.x.dtype == np.float32
    assert table.y.dtype == np.int64 and set(np.unique(table.y)) == {0, 1}
    assert len(table.feature_names) == 30 and table.feature_names[0] == "mean radius"


@pytest.mark.parametrize("n_classes", [2, 4])
def test_synthetic_is_deterministic_and_learnable(n_classes: int) -> None:
    from sklearn.linear_model import LogisticRegression

    a = make_synthetic(600, 8, n_classes=n_classes, seed=3)
    b = make_synthetic(600, 8, n_classes=n_classes, seed=3)
    c = make_synthetic(600, 8, n_classes=n_classes, seed=4)

    assert a.x.dtype == np.float32 and a.y.dtype == np.int64 and a.feature_names[0] == "x0"
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)
    assert set(np.unique(a.y)) == set(range(n_classes))
    model = LogisticRegression(max_iter=500).fit(a.x[:450], a.y[:450])
    assert model.score(a.x[450:], a.y[450:]) > 1.5 / n_classes


def test_synthetic_tiny_table_has_every_class() -> None:
    table = make_synthetic(3, 2, n_classes=3, seed=0)
    assert sorted(table.y) == [0, 1, 2]


def test_table_rejects_mismatched_rows() -> None:
    with pytest.raises(ValueError, match="rows"):
        Table(np.zeros((2, 1), np.float32), np.zeros(3), ("a",))
