"""Image-folder sites (DICOM and NIfTI with a label file) as a simulated study's data, trained
with the CNN learner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import fedcare
from fedcare.core.errors import ConfigError
from tests.unit.test_imaging_folder import _dicom, _labels, _nifti


def write_site(folder: Path, n: int, seed: int, *, nifti: bool = False) -> tuple[Path, Path]:
    """Bright square (label 1) or dark square (label 0) on noise: learnable in a few rounds."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    rows = []
    for i in range(n):
        y = int(rng.integers(0, 2))
        img = rng.normal(100, 10, (20, 20)).clip(0)
        img[6:14, 6:14] += 150 if y else -60
        img = img.clip(0)
        name = f"img{i}.nii" if nifti else f"img{i}.dcm"
        if nifti:
            _nifti(folder / name, img)
        else:
            _dicom(folder / name, img)
        rows.append((name, y))
    return folder, _labels(folder / "labels.csv", rows)


def test_dicom_and_nifti_sites_train_a_cnn(tmp_path: Path) -> None:
    a = write_site(tmp_path / "a", 40, 0)
    b = write_site(tmp_path / "b", 40, 1, nifti=True)
    cfg = {"study": {"name": "img", "rounds": 4, "seed": 0},
           "data": {"source": "image_folder", "size": 16, "window": [0, 300],
                    "site": [{"name": "a", "folder": str(a[0]), "labels": str(a[1])},
                             {"name": "b", "folder": str(b[0]), "labels": str(b[1])}]},
           "model": {"name": "cnn", "channels": [4]},
           "train": {"lr": 0.1, "batch_size": 8, "local_epochs": 2},
           "baselines": {"local": False, "centralized": False}}
    h = fedcare.simulate(cfg)
    assert h.final["global_metrics"]["accuracy"] >= 0.8
    assert {s["name"]: s["train_rows"] + s["test_rows"] for s in h.sites} == {"a": 40, "b": 40}


def test_a_federated_image_study_needs_image_size_and_no_features() -> None:
    from fedcare.config import parse_config

    base = {"source": "federation", "dataset": "xray", "label": "label"}
    with pytest.raises(ConfigError, match="image_size"):
        parse_config({"data": base})
    with pytest.raises(ConfigError, match="standardize = false"):
        parse_config({"data": {**base, "image_size": 32}})
    ok = parse_config({"data": {**base, "image_size": 32, "standardize": False},
                       "model": {"name": "cnn"}})
    from fedcare.engine.learner_factory import ModelShape

    assert ModelShape.of_federated(ok.data).input_shape == (1, 32, 32)  # type: ignore[arg-type]
