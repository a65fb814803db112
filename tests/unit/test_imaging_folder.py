from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from fedcare.core.dataset import SiteData, TaskType
from fedcare.core.errors import DataError
from fedcare.data import imaging
from fedcare.data.imaging import image_site_data, load_image_folder


def _dicom(path: Path, pixels: np.ndarray, *, slope: float | None = None,
           intercept: float | None = None, center: float | None = None,
           width: float | None = None, photometric: str = "MONOCHROME2") -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if center is not None:
        ds.WindowCenter, ds.WindowWidth = center, width
    ds.save_as(path, enforce_file_format=True)
    return path


def _nifti(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), path)
    return path


def _labels(path: Path, rows: list[tuple[str, object]]) -> Path:
    path.write_text("file,label\n" + "".join(f"{f},{y}\n" for f, y in rows))
    return path


def test_dicom_rescale_and_window_tags_map_to_unit_range(tmp_path: Path) -> None:
    # stored 0..200 -> HU = stored * 2 - 100 -> -100..300; window [0, 200] HU
    stored = np.tile(np.arange(0, 201, 25, dtype=np.uint16), (9, 1))
    _dicom(tmp_path / "a.dcm", stored, slope=2, intercept=-100, center=100, width=200)
    labels = _labels(tmp_path / "labels.csv", [("a.dcm", 1)])

    out = load_image_folder(tmp_path, labels, size=9)

    assert out.x.shape == (1, 1, 9, 9) and out.x.dtype == np.float32
    hu = stored[0] * 2.0 - 100
    np.testing.assert_allclose(out.x[0, 0, 0], np.clip(hu / 200, 0, 1), atol=1e-6)
    assert out.y.tolist() == [1] and out.rejects == {}


def test_dicom_without_window_uses_min_max_and_monochrome1_inverts(tmp_path: Path) -> None:
    px = np.arange(16, dtype=np.uint16).reshape(4, 4) * 10
    _dicom(tmp_path / "m2.dcm", px)
    _dicom(tmp_path / "m1.dcm", px, photometric="MONOCHROME1")
    labels = _labels(tmp_path / "l.csv", [("m2.dcm", 0), ("m1.dcm", 1)])

    out = load_image_folder(tmp_path, labels, size=4)

    np.testing.assert_allclose(out.x[0, 0], px / 150, atol=1e-6)
    np.testing.assert_allclose(out.x[1, 0], 1 - px / 150, atol=1e-6)


def test_nifti_volume_middle_slice_resized_and_center_cropped(tmp_path: Path) -> None:
    vol = np.zeros((20, 10, 5))
    vol[:, :, 2] = np.linspace(0, 1, 20)[:, None]  # middle slice: ramp along x
    _nifti(tmp_path / "v.nii.gz", vol)
    labels = _labels(tmp_path / "l.csv", [("v.nii.gz", 2)])

    out = load_image_folder(tmp_path, labels, size=(8, 8))

    img = out.x[0, 0]
    assert img.shape == (8, 8)
    # transposed: the x ramp runs along columns; the 10 rows scale to 8, 20 cols to 16 -> crop
    assert np.all(np.diff(img[4]) > 0) and np.allclose(img[:, 3], img[0, 3], atol=1e-5)
    assert 0.2 < img[4, 0] < img[4, -1] < 0.8  # borders of the long side were cropped


def test_fixed_window_overrides_per_image_scaling(tmp_path: Path) -> None:
    _nifti(tmp_path / "a.nii", np.full((4, 4), 50.0))
    labels = _labels(tmp_path / "l.csv", [("a.nii", 0)])
    out = load_image_folder(tmp_path, labels, size=4, window=(0, 100))
    np.testing.assert_allclose(out.x, 0.5)


def test_bad_rows_and_files_are_counted_by_reason(tmp_path: Path) -> None:
    px = np.arange(16, dtype=np.uint16).reshape(4, 4)
    _dicom(tmp_path / "ok.dcm", px)
    _dicom(tmp_path / "unlabelled.dcm", px)
    (tmp_path / "sub").mkdir()
    _nifti(tmp_path / "sub" / "ok.nii", np.ones((4, 4)) * np.arange(4))
    (tmp_path / "broken.dcm").write_bytes(b"definitely not DICOM")
    (tmp_path / "broken.nii").write_bytes(b"nope")
    labels = _labels(tmp_path / "l.csv", [
        ("ok.dcm", 0), ("sub/ok.nii", 1), ("gone.dcm", 1), ("broken.dcm", 0),
        ("broken.nii", 1), ("ok.dcm", 1), ("unlabelled2.dcm", "cat"), ("x.dcm", -1),
        ("y.dcm", 0.5)])

    out = load_image_folder(tmp_path, labels, size=4)

    assert out.files == ("ok.dcm", "sub/ok.nii")
    assert out.rejects == {imaging.NO_IMAGE: 1, imaging.UNREADABLE: 2, imaging.DUPLICATE: 1,
                           imaging.BAD_LABEL: 3, imaging.NO_LABEL: 1}


def test_clear_errors_for_unusable_input(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "nope", tmp_path / "l.csv")
    with pytest.raises(DataError, match="label file"):
        load_image_folder(tmp_path, tmp_path / "l.csv")
    (tmp_path / "bad.csv").write_text("path,y\na.dcm,1\n")
    with pytest.raises(DataError, match="'file'"):
        load_image_folder(tmp_path, tmp_path / "bad.csv")
    labels = _labels(tmp_path / "l.csv", [("gone.dcm", 1)])
    with pytest.raises(DataError, match="no usable image"):
        load_image_folder(tmp_path, labels)
    with pytest.raises(DataError, match="window"):
        load_image_folder(tmp_path, labels, window=(1, 1))


def test_site_data_matches_the_npz_path_shape_and_types(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(10):
        _dicom(tmp_path / f"i{i}.dcm", rng.integers(0, 4000, size=(12, 10)).astype(np.uint16))
        rows.append((f"i{i}.dcm", i % 2))
    labels = _labels(tmp_path / "l.csv", rows)

    data, loaded = image_site_data(tmp_path, labels, site="h1", size=8, test_fraction=0.2)

    assert isinstance(data, SiteData)
    assert data.input_shape == (1, 8, 8) and data.task is TaskType.BINARY
    assert data.num_classes == 2 and data.feature_names == ()
    assert len(data.y_train) + len(data.y_test) == 10 and len(data.y_test) == 2
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.x_train.min() >= 0 and data.x_train.max() <= 1
    assert len(loaded.files) == 10
    with pytest.raises(DataError, match="num_classes"):
        image_site_data(tmp_path, labels, site="h1", size=8, num_classes=1)
    multi, _ = image_site_data(tmp_path, labels, site="h1", size=8, num_classes=3)
    assert multi.task is TaskType.MULTICLASS


def test_dicom_files_are_real_dicom(tmp_path: Path) -> None:
    path = _dicom(tmp_path / "a.dcm", np.zeros((2, 2), np.uint16))
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
