"""``source = "npz"``: MedMNIST-style images in one .npz, split over simulated sites."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, Self

from pydantic import Field

from fedcare.data.sources.base import MAX_ALPHA, MAX_SITES, DataOptions
from fedcare.data.sources.registry import register_source

if TYPE_CHECKING:
    from fedcare.core.dataset import SiteData


@register_source
class ImageData(DataOptions):
    source: Literal["npz"] = Field(description="MedMNIST-style .npz images split over sites.")
    path: Path = Field(description=".npz with train/val/test _images and _labels arrays.")
    sites: int = Field(3, ge=1, le=MAX_SITES,
                       description="Number of sites the training images are split into.")
    partition: Literal["iid", "dirichlet"] = Field("iid", description="iid or dirichlet.")
    alpha: float = Field(0.5, gt=0, le=MAX_ALPHA, allow_inf_nan=False,
                         description="Dirichlet concentration.")
    standardize: bool = Field(False, description="Images are scaled to [0, 1] already.")

    def resolved(self, base: Path) -> Self:
        return self.model_copy(update={"path": base / self.path})

    def declared_sites(self) -> int:
        return self.sites

    def test_split(self) -> str:
        return "the .npz file's test images"

    def build(self, seed: int) -> list[SiteData]:
        import numpy as np

        from fedcare.data.images import load_npz_images
        from fedcare.data.partition import partition_dirichlet, partition_iid
        from fedcare.data.sources.split import finish, task_of

        splits = load_npz_images(self.path, site="(all)")
        x_tr, y_tr = splits["train"]
        x_te, y_te = splits.get("test", (x_tr[:0], y_tr[:0]))
        task, n_classes = task_of(np.concatenate([y_tr, y_te]))
        if self.partition == "dirichlet":
            train_parts = partition_dirichlet(y_tr, self.sites, self.alpha, seed)
        else:
            train_parts = partition_iid(len(y_tr), self.sites, seed)
        test_parts = (partition_iid(len(y_te), self.sites, seed + 1) if len(y_te) >= self.sites
                      else [np.arange(0)] * self.sites)
        arrays = [(f"site-{i + 1}", x_tr[tp], y_tr[tp], x_te[sp], y_te[sp])
                  for i, (tp, sp) in enumerate(zip(train_parts, test_parts, strict=True))]
        return finish(arrays, (), task, n_classes, self.standardize)
