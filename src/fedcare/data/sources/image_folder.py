"""``source = "image_folder"``: each site's folder of DICOM or NIfTI images with a label
file (:mod:`fedcare.data.imaging`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Self

from pydantic import Field

from fedcare.core.settings import Section
from fedcare.data.sources.base import MAX_CLASSES, MAX_SITES, DataOptions
from fedcare.data.sources.registry import register_source

if TYPE_CHECKING:
    from fedcare.core.dataset import SiteData


class ImageFolderSite(Section):
    name: str = Field(min_length=1, max_length=100, description="Site name.")
    folder: Path = Field(description="Folder of DICOM (.dcm) or NIfTI (.nii, .nii.gz) images.")
    labels: Path = Field(description="CSV with columns file,label (class ids 0..k-1).")


@register_source
class ImageFolderData(DataOptions):
    source: Literal["image_folder"] = Field(description=(
        "One folder of DICOM or NIfTI images with a label file per site."))
    site: list[ImageFolderSite] = Field(min_length=1, max_length=MAX_SITES, description=(
        "Sites: [[data.site]] name, folder, labels."))
    size: int = Field(64, ge=8, le=1024, description=(
        "Images are resized (shorter side) and centre-cropped to size x size."))
    window: list[Annotated[float, Field(ge=-1e9, le=1e9, allow_inf_nan=False)]] | None = Field(
        None, min_length=2, max_length=2, description=(
        "Intensity window [low, high] for every image (default: DICOM window tags, else each "
        "image's min..max)."))
    classes: int | None = Field(None, ge=2, le=MAX_CLASSES, description=(
        "Number of classes (default: from the labels)."))
    standardize: bool = Field(False, description="Images are scaled to [0, 1] already.")

    def resolved(self, base: Path) -> Self:
        folders = [x.model_copy(update={"folder": base / x.folder, "labels": base / x.labels})
                   for x in self.site]
        return self.model_copy(update={"site": folders})

    def declared_sites(self) -> int:
        return len(self.site)

    def build(self, seed: int) -> list[SiteData]:
        """Each site's images with its label file; the class count is agreed across sites
        (a site may lack a class)."""
        from fedcare.data.imaging import image_site_data

        window = (self.window[0], self.window[1]) if self.window else None
        classes = self.classes or max(2, 1 + max(_max_label(s.labels, s.name)
                                                 for s in self.site))
        return [image_site_data(s.folder, s.labels, site=s.name, size=self.size, window=window,
                                test_fraction=self.test_fraction, seed=seed, site_index=i,
                                num_classes=classes)[0] for i, s in enumerate(self.site)]


def _max_label(path: Path, site: str) -> int:
    import pandas as pd

    from fedcare.core.errors import DataError

    try:
        return int(pd.read_csv(path)["label"].max())
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"cannot read labels from {path}: {exc}", site=site) from exc
