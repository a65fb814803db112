"""Demo data: scikit-learn's breast-cancer set split over three hospitals with label skew.

Each hospital gets a different share of patients and a different case mix (Dirichlet
label skew), written as its own CSV, the way a site would export its data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HOSPITALS = ("st-marys", "charite", "karolinska")
DATASET = "breast"
LABEL = "target"


def write_hospitals(folder: Path, seed: int = 0,
                    alpha: float = 1.0) -> tuple[list[str], dict[str, Path]]:
    """Write one CSV per hospital; return the feature names and each hospital's file."""
    from sklearn.datasets import load_breast_cancer

    from fedcare.data.partition import partition_dirichlet

    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    parts = partition_dirichlet(frame[LABEL].to_numpy(), len(HOSPITALS), alpha, seed, min_rows=40)
    files = {}
    for name, idx in zip(HOSPITALS, parts, strict=True):
        path = folder / f"{name}.csv"
        frame.iloc[np.sort(idx)].to_csv(path, index=False)
        files[name] = path
    features = [c for c in frame.columns if c != LABEL]
    return features, files
