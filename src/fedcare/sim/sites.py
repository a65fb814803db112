"""Turn the ``[data]`` section of a study into one :class:`SiteData` per site.

Each data source builds its own sites (:meth:`fedcare.data.sources.base.DataOptions.build`,
one module per source in :mod:`fedcare.data.sources`). All validation happens there, before
any output is written: a missing file, an absent label, a site with zero rows or features
that differ between sites stop the run with a message that names the site.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedcare.config import DataSection
from fedcare.core.dataset import SiteData


def build_sites(data: DataSection, seed: int) -> list[SiteData]:
    return data.build(seed)


def input_standardization(data: DataSection, seed: int) -> dict[str, np.ndarray] | None:
    """The ``mean``/``std`` :func:`build_sites` scaled every site's features by (None: the
    study does not standardize), for the saved model bundle: the sites are built again
    unscaled and pooled by the same rule. (Building twice keeps the loaders' return values
    unchanged; it costs one more read of the files, once per run.)"""
    if not data.standardize:
        return None
    from fedcare.data.standardize import federated_standardizer

    raw = build_sites(data.model_copy(update={"standardize": False}), seed)
    mean, std = federated_standardizer([s.x_train for s in raw])
    return {"mean": mean, "std": std}


def pooled(sites: Sequence[SiteData]) -> SiteData:
    """All sites' rows together: the centralized baseline (only possible in simulation)."""
    s0 = sites[0]
    return SiteData(name="pooled", x_train=np.concatenate([s.x_train for s in sites]),
                    y_train=np.concatenate([s.y_train for s in sites]),
                    x_test=np.concatenate([s.x_test for s in sites]),
                    y_test=np.concatenate([s.y_test for s in sites]),
                    feature_names=s0.feature_names, task=s0.task, num_classes=s0.num_classes)
