from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedcare.core.errors import DataError
from fedcare.data import load_npz_images


def _images(n: int, *tail: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *tail), dtype=np.uint8)


def _npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "tiny.npz"
    np.savez(path, **arrays)
    return path


def _medmnist_like(tmp_path: Path) -> Path:
    return _npz(tmp_path, train_images=_images(5, 4, 3), train_labels=np.array([[0], [1], [1],
                                                                                 [0], [1]],
                                                                                np.uint8),
                val_images=_images(2, 4, 3), val_labels=np.array([[1], [0]], np.uint8),
                test_images=_images(3, 4, 3), test_labels=np.array([[0], [0], [1]], np.uint8))


def test_grayscale_splits_become_nchw_floats_in_unit_range(tmp_path: Path) -> None:
    path = _medmnist_like(tmp_path)
    raw = np.load(path)["train_images"]

    splits = load_npz_images(path, site="h1")

    assert set(splits) == {"train", "val", "test"}
    x, y = splits["train"]
    assert x.shape == (5, 1, 4, 3) and x.dtype == np.float32
    assert y.dtype == np.int64 and y.tolist() == [0, 1, 1, 0, 1]
    np.testing.assert_allclose(x[:, 0] * 255, raw, atol=1e-4)
    assert x.min() >= 0 and x.max() <= 1
    assert splits["test"][0].shape == (3, 1, 4, 3)


def test_colour_images_move_channels_first(tmp_path: Path) -> None:
    imgs = _images(2, 4, 3, 3)
    path = _npz(tmp_path, train_images=imgs, train_labels=np.array([2, 0]))

    x, y = load_npz_images(str(path), site="h1")["train"]

    assert x.shape == (2, 3, 4, 3)
    np.testing.assert_allclose(x[1, 2] * 255, imgs[1, :, :, 2], atol=1e-4)
    assert y.tolist() == [2, 0]


def test_only_train_is_required(tmp_path: Path) -> None:
    path = _npz(tmp_path, train_images=_images(2, 3, 3), train_labels=np.array([0, 1]))
    assert set(load_npz_images(path, site="h1")) == {"train"}


def _error(path: Path) -> str:
    with pytest.raises(DataError) as info:
        load_npz_images(path, site="st-mary")
    assert info.value.site == "st-mary" and "st-mary" in str(info.value)
    return str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    assert "does not exist" in _error(tmp_path / "absent.npz")


def test_missing_train(tmp_path: Path) -> None:
    path = _npz(tmp_path, test_images=_images(2, 3, 3), test_labels=np.array([0, 1]))
    msg = _error(path)
    assert "'train_images'" in msg and "test_images" in msg


def test_split_without_labels_names_the_key(tmp_path: Path) -> None:
    path = _npz(tmp_path, train_images=_images(2, 3, 3), train_labels=np.array([0, 1]),
                val_images=_images(2, 3, 3))
    assert "'val_labels'" in _error(path)


@pytest.mark.parametrize("arrays,key,problem", [
    ({"train_images": np.zeros((2, 3, 3), np.float32)}, "train_images", "uint8"),
    ({"train_images": _images(2, 3)}, "train_images", "(n, H, W)"),
    ({"train_images": _images(2, 0, 3)}, "train_images", "empty dimension"),
    ({"train_labels": np.array([[0, 1], [1, 0]])}, "train_labels", "multi-label"),
    ({"train_labels": np.array([0.0, 1.0])}, "train_labels", "integer"),
    ({"train_labels": np.array([0, 1, 1])}, "train_labels", "3 labels for 2 images"),
    ({"train_labels": np.array([0, -1])}, "train_labels", "negative"),
    ({"train_images": _images(0, 3, 3), "train_labels": np.array([], np.int64)},
     "train_images", "zero images"),
    ({"test_images": _images(1, 5, 5), "test_labels": np.array([0])}, "", "different image"),
])
def test_malformed_arrays_name_the_key(tmp_path: Path, arrays: dict, key: str,
                                       problem: str) -> None:
    base = {"train_images": _images(2, 3, 3), "train_labels": np.array([0, 1])}
    msg = _error(_npz(tmp_path, **(base | arrays)))
    assert key in msg and problem in msg


def test_object_arrays_are_refused_without_unpickling(tmp_path: Path) -> None:
    labels = np.array([{"x": 1}, {"x": 2}], dtype=object)
    path = _npz(tmp_path, train_images=_images(2, 3, 3), train_labels=labels)
    msg = _error(path)
    assert "'train_labels'" in msg


def test_corrupt_archive(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    path.write_bytes(b"PK\x03\x04 definitely not a zip")
    assert "cannot read" in _error(path)


def test_single_array_file(tmp_path: Path) -> None:
    path = tmp_path / "one.npy"
    np.save(path, _images(2, 3, 3))
    assert "single array" in _error(path)
