"""Read a MedMNIST-style ``.npz`` of images into float arrays a convolutional model takes.

MedMNIST v2 (Yang et al., Scientific Data 10, 41, 2023) ships each dataset as one ``.npz``
with ``{train,val,test}_{images,labels}``: uint8 images (n, H, W) or (n, H, W, C) and integer
labels (n, 1). Models want (n, C, H, W) floats in [0, 1], so this module converts once, on load.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from fedcare.core.errors import DataError

SPLITS = ("train", "val", "test")


def load_npz_images(path: str | Path, *, site: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Return ``{split: (x float32 (n, C, H, W) in [0, 1], y int64 (n,))}`` for the splits present.

    ``train`` is required; ``val`` and ``test`` are returned when the file has them. The file is
    read with ``allow_pickle=False``: a data file must never be able to run code.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"image file {p} does not exist (or is not a file); check the path "
                        "configured for this site.", site=site)
    try:
        archive = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {p} as a .npz archive ({type(exc).__name__}); export it "
                        "again in the MedMNIST .npz format.", site=site) from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{p} holds a single array, not a .npz archive with train_images and "
                        "train_labels.", site=site)
    with archive:
        if "train_images" not in archive.files or "train_labels" not in archive.files:
            raise DataError(f"{p} has no 'train_images'/'train_labels' (keys: "
                            f"{sorted(archive.files)}); a MedMNIST-style file needs both.",
                            site=site)
        out = {}
        for split in SPLITS:
            if f"{split}_images" in archive.files or f"{split}_labels" in archive.files:
                out[split] = _split(archive, split, p, site)
    channels = {x.shape[1:] for x, _ in out.values()}
    if len(channels) > 1:
        raise DataError(f"the splits of {p} have different image shapes {sorted(channels)}; "
                        "every split must have the same (H, W, C).", site=site)
    if len(out["train"][1]) == 0:
        raise DataError(f"'train_images' in {p} has zero images.", site=site)
    return out


def _split(archive: np.lib.npyio.NpzFile, split: str, p: Path,
           site: str) -> tuple[np.ndarray, np.ndarray]:
    images = _array(archive, f"{split}_images", p, site)
    labels = _array(archive, f"{split}_labels", p, site)
    return _images(images, f"{split}_images", p, site), _labels(labels, len(images), split, p,
                                                                  site)


def _array(archive: np.lib.npyio.NpzFile, key: str, p: Path, site: str) -> np.ndarray:
    if key not in archive.files:
        raise DataError(f"{p} has {key.split('_')[0]!r} data but no {key!r}; a split needs "
                        "both images and labels.", site=site)
    try:
        return archive[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {key!r} from {p} ({type(exc).__name__}: it is corrupt or "
                        "holds Python objects); export the file again.", site=site) from exc


def _images(images: np.ndarray, key: str, p: Path, site: str) -> np.ndarray:
    if images.dtype != np.uint8:
        raise DataError(f"{key!r} in {p} has dtype {images.dtype}; expected uint8 pixels "
                        "0..255.", site=site)
    if images.ndim == 3:
        images = images[:, None, :, :]
    elif images.ndim == 4:
        images = images.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{key!r} in {p} has shape {images.shape}; expected (n, H, W) or "
                        "(n, H, W, C).", site=site)
    if 0 in images.shape[1:]:
        raise DataError(f"{key!r} in {p} has an empty dimension, shape {images.shape}.",
                        site=site)
    x = np.ascontiguousarray(images, dtype=np.float32)
    x /= np.float32(255.0)
    return x


def _labels(labels: np.ndarray, n: int, split: str, p: Path, site: str) -> np.ndarray:
    key = f"{split}_labels"
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    elif labels.ndim != 1:
        raise DataError(f"{key!r} in {p} has shape {labels.shape}; expected (n,) or (n, 1) "
                        "(multi-label files are not supported).", site=site)
    if labels.dtype.kind not in "iub":
        raise DataError(f"{key!r} in {p} has dtype {labels.dtype}; expected integer class ids.",
                        site=site)
    if len(labels) != n:
        raise DataError(f"{key!r} in {p} has {len(labels)} labels for {n} images.", site=site)
    if len(labels) and labels.min() < 0:
        raise DataError(f"{key!r} in {p} has negative class ids; expected 0..k-1.", site=site)
    return labels.astype(np.int64)
