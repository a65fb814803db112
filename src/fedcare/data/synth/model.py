"""The ground-truth cardiovascular risk model the synthetic hospitals are drawn from.

A logistic model on *standardized* features, ``logit p = intercept + sum_j beta_j z_j`` with
``z_j = (x_j - center_j) / scale_j``. Centers and scales are fixed constants (not sample
statistics), so the true coefficients mean the same thing at every hospital and in every
sample; a model fitted on the harmonized features of all hospitals should recover ``beta`` up
to the rescaling by the fitted standardizer. The coefficients are of the sign and rough size of
the pooled-cohort risk equations (Goff et al., *Circulation* 129, 2014): age, blood pressure,
cholesterol, smoking and diabetes raise risk; HDL, female sex and statins lower it.

The features are those of the demo contract (``examples/contracts/cardio.toml``), in its order
and its canonical units.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

FEATURES: Final = ("age", "sex_female", "sbp", "total_chol", "hdl", "glucose", "creatinine",
                   "smoker", "diabetes", "statin")
MEASUREMENTS: Final = ("sbp", "total_chol", "hdl", "glucose", "creatinine")
LABEL: Final = "cvd_event"
CANONICAL_UNITS: Final = {"sbp": "mm[Hg]", "total_chol": "mmol/L", "hdl": "mmol/L",
                          "glucose": "mmol/L", "creatinine": "umol/L", "age": "year"}
# Grid of generated canonical values: every value is a multiple of this step, so a unit round
# trip (e.g. mmol/L -> mg/dL -> mmol/L) followed by rounding to 4 decimals gives it back exactly.
GRID: Final = {"age": 1.0, "sbp": 1.0, "total_chol": 0.01, "hdl": 0.01, "glucose": 0.01,
               "creatinine": 1.0}
COMPARE_DECIMALS: Final = 4

_CENTER: Final = {"age": 60.0, "sex_female": 0.5, "sbp": 135.0, "total_chol": 5.2, "hdl": 1.35,
                  "glucose": 6.0, "creatinine": 85.0, "smoker": 0.25, "diabetes": 0.15,
                  "statin": 0.25}
_SCALE: Final = {"age": 12.0, "sex_female": 0.5, "sbp": 20.0, "total_chol": 1.0, "hdl": 0.4,
                 "glucose": 1.8, "creatinine": 20.0, "smoker": 0.43, "diabetes": 0.36,
                 "statin": 0.43}
_BETA: Final = {"age": 0.9, "sex_female": -0.3, "sbp": 0.45, "total_chol": 0.3, "hdl": -0.35,
                "glucose": 0.2, "creatinine": 0.15, "smoker": 0.35, "diabetes": 0.3,
                "statin": -0.2}


@dataclass(frozen=True)
class TrueRiskModel:
    """``P(cvd_event = 1 | x) = sigmoid(intercept + sum_j coef[j] * (x[j] - center[j]) /
    scale[j])``, features in :data:`FEATURES` order and canonical units."""

    intercept: float = -1.6
    coef: Mapping[str, float] = field(default_factory=lambda: dict(_BETA))
    center: Mapping[str, float] = field(default_factory=lambda: dict(_CENTER))
    scale: Mapping[str, float] = field(default_factory=lambda: dict(_SCALE))

    def logit(self, x: pd.DataFrame | Mapping[str, np.ndarray]) -> np.ndarray:
        z = np.full(len(np.asarray(x[FEATURES[0]])), self.intercept, dtype=np.float64)
        for f in FEATURES:
            z += self.coef[f] * (np.asarray(x[f], dtype=np.float64) - self.center[f]) \
                / self.scale[f]
        return z

    def probability(self, x: pd.DataFrame | Mapping[str, np.ndarray]) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logit(x)))

    def coefficients(self) -> np.ndarray:
        """The coefficient vector in :data:`FEATURES` order."""
        return np.array([self.coef[f] for f in FEATURES])
