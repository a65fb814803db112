"""Register a folder of DICOM or NIfTI images with a label file as a site's image dataset.

A hospital's imaging data is a folder of files (DICOM from PACS, NIfTI from research
pipelines) plus a list of labels; the CNN learners want what :mod:`fedcare.data.images` makes
from a MedMNIST ``.npz``: float32 ``(n, 1, H, W)`` in ``[0, 1]`` and int64 class ids, in a
:class:`SiteData`. This module does that conversion, once, at the site.

**Intensity.** DICOM pixels are first mapped to modality units with ``RescaleSlope`` /
``RescaleIntercept`` (e.g. CT Hounsfield units; PS3.3 C.11.1), then windowed: with
``WindowCenter`` / ``WindowWidth`` in the file (first value if several) the window
``[c - w/2, c + w/2]`` maps linearly to ``[0, 1]`` (the plain linear form, not PS3.3 C.11.2's
half-pixel variant, a difference below one grey level), otherwise the image's own min..max does.
``MONOCHROME1`` images are inverted so that bright means dense everywhere. NIfTI has no window
tags: min..max per image. ``window=(low, high)`` overrides both for every image (use it for CT,
where a per-image min..max makes intensities incomparable between patients).

**Geometry.** A 3-D volume contributes its middle slice (DICOM multi-frame: middle frame; NIfTI:
middle slice along the third axis, transposed to rows x columns); colour DICOM is averaged to
grey. Each image is resized so its *shorter* side equals the target, bilinearly with
antialiasing (``torch.nn.functional.interpolate``), then center-cropped to the target: the
aspect ratio is kept, the borders of the longer side are cut.

**Bad input is counted, not fatal**: a label row whose image is missing, an image no row labels,
a file that cannot be read, a label that is not a class id, a duplicate row -- each is a count
by reason in :attr:`ImageFolder.rejects`; only a missing folder or label file, a label file
without ``file``/``label`` columns, or no usable image at all raises :class:`DataError`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from fedcare.core.dataset import SiteData, TaskType
from fedcare.core.errors import DataError

SUFFIXES: Final = (".dcm", ".dicom", ".nii", ".nii.gz")

NO_IMAGE: Final = "label row without image"
NO_LABEL: Final = "image without label"
UNREADABLE: Final = "unreadable image"
BAD_LABEL: Final = "label not a class id"
DUPLICATE: Final = "duplicate label row"


@dataclass(frozen=True)
class ImageFolder:
    """Images ``x`` float32 (n, 1, H, W) in [0, 1], labels ``y`` int64, and what was left out."""

    x: np.ndarray
    y: np.ndarray
    files: tuple[str, ...]
    rejects: Counter[str] = field(default_factory=Counter)


def load_image_folder(folder: str | Path, labels: str | Path, *, size: int | tuple[int, int] = 64,
                      window: tuple[float, float] | None = None,
                      site: str | None = None) -> ImageFolder:
    """Read every labelled image of ``folder``; ``labels`` is a CSV with ``file,label`` columns.

    ``file`` is relative to ``folder``; ``label`` an integer class id >= 0. Rows keep the label
    file's order.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist (or is not a folder); check the "
                        "path configured for this site.", site=site)
    height, width = (size, size) if isinstance(size, int) else size
    if height < 1 or width < 1:
        raise DataError(f"image size must be positive, got {size}", site=site)
    if window is not None and not window[1] > window[0]:
        raise DataError(f"window {window} must be (low, high) with high > low", site=site)
    rows, rejects = _label_rows(Path(labels), site)
    on_disk = {str(p.relative_to(root)) for p in root.rglob("*")
               if p.is_file() and p.name.lower().endswith(SUFFIXES)}
    labelled = {f for f, _ in rows}
    rejects[NO_LABEL] += len(on_disk - {str(Path(f)) for f in labelled})
    images, ys, files = [], [], []
    for name, label in rows:
        path = root / name
        if not path.is_file():
            rejects[NO_IMAGE] += 1
            continue
        try:
            pixels = _read(path, window)
        except _Unreadable:
            rejects[UNREADABLE] += 1
            continue
        images.append(_resize(pixels, height, width))
        ys.append(label)
        files.append(name)
    if not images:
        raise DataError(f"no usable image in {root} (left out: {dict(rejects)}); check that the "
                        "label file's 'file' column names files in that folder.", site=site)
    x = np.stack(images)[:, None, :, :].astype(np.float32)
    return ImageFolder(x, np.asarray(ys, dtype=np.int64), tuple(files),
                       Counter({k: v for k, v in rejects.items() if v}))


def image_site_data(folder: str | Path, labels: str | Path, *, site: str,
                    size: int | tuple[int, int] = 64, window: tuple[float, float] | None = None,
                    test_fraction: float = 0.2, seed: int = 0, site_index: int = 0,
                    num_classes: int | None = None) -> tuple[SiteData, ImageFolder]:
    """The folder as a :class:`SiteData` (split like every other site's rows), plus the load.

    ``num_classes`` fixes the class count for the federation (a site may lack a class); by
    default it is ``max(label) + 1`` (at least 2).
    """
    from fedcare.core.seeds import site_round_seed
    from fedcare.data.partition import split_train_test

    loaded = load_image_folder(folder, labels, size=size, window=window, site=site)
    n_classes = num_classes if num_classes is not None else max(2, int(loaded.y.max()) + 1)
    if int(loaded.y.max()) >= n_classes:
        raise DataError(f"labels go up to {int(loaded.y.max())} but num_classes is "
                        f"{n_classes}; class ids must be 0..{n_classes - 1}", site=site)
    task = TaskType.BINARY if n_classes == 2 else TaskType.MULTICLASS
    tr, te = split_train_test(np.arange(len(loaded.y)), test_fraction,
                              site_round_seed(seed, 0, site_index))
    data = SiteData(site, np.ascontiguousarray(loaded.x[tr]), loaded.y[tr],
                    np.ascontiguousarray(loaded.x[te]), loaded.y[te], (), task, n_classes)
    return data, loaded


# -- label file -------------------------------------------------------------------------------


def _label_rows(path: Path, site: str | None) -> tuple[list[tuple[str, int]], Counter[str]]:
    import pandas as pd

    if not path.is_file():
        raise DataError(f"label file {path} does not exist; give a CSV with columns file,label.",
                        site=site)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read label file {path} as CSV ({type(exc).__name__}).",
                        site=site) from exc
    missing = [c for c in ("file", "label") if c not in frame.columns]
    if missing:
        raise DataError(f"label file {path} lacks column(s) {missing}; its columns are "
                        f"{list(frame.columns)[:10]}. It needs 'file' and 'label'.", site=site)
    rejects: Counter[str] = Counter()
    rows: list[tuple[str, int]] = []
    seen: set[str] = set()
    for name, raw in zip(frame["file"].str.strip(), frame["label"].str.strip(), strict=True):
        label = _class_id(raw)
        if label is None:
            rejects[BAD_LABEL] += 1
            continue
        key = str(Path(name))
        if key in seen:
            rejects[DUPLICATE] += 1
            continue
        seen.add(key)
        rows.append((name, label))
    return rows, rejects


def _class_id(raw: str) -> int | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0 or value != int(value):
        return None
    return int(value)


# -- pixels -----------------------------------------------------------------------------------


class _Unreadable(Exception):
    """Control flow: this file cannot be read; it is counted, not raised."""


def _read(path: Path, window: tuple[float, float] | None) -> np.ndarray:
    """A 2-D float64 image scaled to [0, 1]."""
    if path.name.lower().endswith((".nii", ".nii.gz")):
        pixels, tags = _read_nifti(path), None
    else:
        pixels, tags = _read_dicom(path)
    if not np.isfinite(pixels).all():
        raise _Unreadable
    if window is None and tags is not None:
        window = tags
    lo, hi = window if window is not None else (float(pixels.min()), float(pixels.max()))
    if hi <= lo:
        return np.zeros_like(pixels)
    return np.clip((pixels - lo) / (hi - lo), 0.0, 1.0)


def _read_dicom(path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
        raw = np.asarray(ds.pixel_array, dtype=np.float64)
    except (InvalidDicomError, AttributeError, ValueError, KeyError, TypeError, OSError,
            RuntimeError, NotImplementedError):
        raise _Unreadable from None
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422") and raw.shape[-1] == 3:
        raw = raw.mean(axis=-1)
    if frames > 1 and raw.ndim == 3:
        raw = raw[raw.shape[0] // 2]
    if raw.ndim != 2 or 0 in raw.shape:
        raise _Unreadable
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    pixels = raw * slope + intercept
    window = None
    center, width = _first(getattr(ds, "WindowCenter", None)), _first(
        getattr(ds, "WindowWidth", None))
    if center is not None and width is not None and width > 0:
        window = (center - width / 2, center + width / 2)
    if photometric == "MONOCHROME1":
        lo, hi = window if window is not None else (float(pixels.min()), float(pixels.max()))
        pixels = hi + lo - pixels
    return pixels, window


def _first(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _read_nifti(path: Path) -> np.ndarray:
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        data = np.asarray(nib.load(path).get_fdata(), dtype=np.float64)  # type: ignore[attr-defined]
    except (ImageFileError, OSError, ValueError, EOFError, TypeError):
        raise _Unreadable from None
    while data.ndim > 3:
        data = data[..., 0]
    if data.ndim == 3:
        data = data[:, :, data.shape[2] // 2]
    if data.ndim != 2 or 0 in data.shape:
        raise _Unreadable
    return np.ascontiguousarray(data.T)


def _resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale the shorter side to fit, bilinear with antialiasing, then center-crop."""
    import torch
    import torch.nn.functional as F

    h, w = img.shape
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    if (new_h, new_w) != (h, w):
        t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
        img = F.interpolate(t, size=(new_h, new_w), mode="bilinear", align_corners=False,
                            antialias=True)[0, 0].numpy()
    top, left = (img.shape[0] - height) // 2, (img.shape[1] - width) // 2
    return np.clip(img[top:top + height, left:left + width], 0.0, 1.0)
