"""Small real pieces for engine tests: site data, and learners that misbehave on purpose."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fedcare.core.dataset import SiteData, TaskType
from fedcare.core.learning import FitResult, Learner
from fedcare.core.messages import TrainConfig
from fedcare.core.params import Parameters
from fedcare.privacy.dp.ledger import LedgerKey


def make_sites(n_sites: int = 3, rows: int = 40, features: int = 5, seed: int = 0,
               test_rows: int = 10) -> list[SiteData]:
    rng = np.random.default_rng(seed)
    teacher = rng.normal(size=features)
    sites = []
    for i in range(n_sites):
        x = rng.normal(size=(rows + test_rows, features)).astype(np.float32)
        y = (x @ teacher + 0.3 * rng.normal(size=rows + test_rows) > 0).astype(np.int64)
        sites.append(SiteData(f"site-{i + 1}", x[:rows], y[:rows], x[rows:], y[rows:],
                              tuple(f"f{j}" for j in range(features)), TaskType.BINARY, 2))
    return sites


class PoisonedLearner:
    """Wraps a real learner; returns NaN weights (or raises) for chosen sites' data."""

    def __init__(self, inner: Learner, bad_rows: int, mode: str = "nan") -> None:
        self.inner, self.bad_rows, self.mode = inner, bad_rows, mode
        self.name = inner.name

    def initial_parameters(self) -> Parameters:
        return self.inner.initial_parameters()

    def fit(self, parameters: Parameters, x: np.ndarray, y: np.ndarray, config: TrainConfig,
            *, seed: int, correction: Parameters | None = None) -> FitResult:
        result = self.inner.fit(parameters, x, y, config, seed=seed, correction=correction)
        if len(x) != self.bad_rows:
            return result
        if self.mode == "raise":
            raise RuntimeError("disk full")
        bad = Parameters({k: np.full_like(v, np.nan) for k, v in result.parameters.items()})
        return replace(result, parameters=bad)

    def evaluate(self, parameters: Parameters, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        return self.inner.evaluate(parameters, x, y)


def ledger_key() -> LedgerKey:
    """A fresh EC P-256 key pair for a privacy ledger (a site kit's ``site.key`` and
    certificate in production)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    return LedgerKey(private.public_key(), private)
