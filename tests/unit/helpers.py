"""Small real pieces for engine tests: site data, and learners that misbehave on purpose."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

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


# -- site policies ------------------------------------------------------------------------
_EVAL_NAMES = ("loss", "accuracy", "auc", "balanced_accuracy", "f1", "brier", "mse", "rmse",
               "mae")
#: Every metric name a fedcare reply can carry (learners, DP facts, rows dropped).
ALL_METRICS = ("train_loss", "steps", "dp_clip", "dp_noise_multiplier", "dp_sample_rate",
               "prevalence", *_EVAL_NAMES, *(f"trivial_{n}" for n in _EVAL_NAMES),
               *(f"class_share_{c}" for c in range(20)), "rows_dropped/missing label")


def permissive_policy() -> str:
    """A site policy admitting every study and releasing every metric fedcare has, each key
    stated (never an "allow all" switch): for tests whose subject is not the site policy.
    ``load_policy`` reads it."""
    def names(values: tuple[str, ...]) -> str:
        return "[" + ", ".join(f'"{v}"' for v in values) + "]"

    metrics = names(ALL_METRICS)
    return (
        "# A test site's permissive policy: every key stated.\n"
        "[studies]\n"
        'strategies = ["fedavg", "fedprox", "fedadagrad", "fedadam", "fedyogi", "fedmedian", '
        '"scaffold", "xgboost"]\n'
        'models = ["logreg", "mlp", "cnn", "resnet", "lstm", "gru", "transformer", '
        '"sgd_linear", "xgboost", "custom"]\n'
        "custom_code = true\nmax_rounds = 100000\n\n"
        "[cohort]\nmin_rows = 1\nmin_per_class = 0\n\n"
        "[privacy]\nrequire_dp = false\n"
        'mechanisms = ["dp_sgd", "dp_fedavg_central", "dp_fedavg_distributed"]\n'
        "max_epsilon_per_study = 1000.0\nmax_epsilon_total = 1000.0\nmax_delta = 0.5\n\n"
        '[secure_aggregation]\nrequired = false\nprotocols = ["secagg", "secagg+", "ckks"]\n\n'
        "[release]\n" + "".join(f"{kind} = {metrics}\n" for kind in (
            "fit", "evaluate", "local_baseline", "stats", "sa_share", "sa_mask", "sa_unmask",
            "he_decrypt")))


def with_permissive_policy(site_toml: str | Path, name: str = "site_policy.toml") -> Path:
    """Write :func:`permissive_policy` beside ``site_toml`` and name it in a ``[policy]``
    table appended to that file; returns the policy file."""
    conf = Path(site_toml)
    policy = conf.parent / name
    policy.write_text(permissive_policy())
    conf.write_text(conf.read_text() + f'\n[policy]\nfile = "{name}"\n')
    return policy


def insert_study_at_old_schema(db: Any, sites: list[str], rounds: int, config_hash: str,
                               status: str = "pending") -> str:
    """Insert a study row into a hub database migrated only part-way (a migration test), in
    the columns every revision has: ``StudyRepo.create`` writes the head's columns (such as
    ``owner``), which an old database does not have yet. Returns the study id."""
    import json
    import secrets

    study_id = secrets.token_hex(6)
    with db.engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO studies (id, name, config, config_hash, status, rounds_planned, "
            "current_round, created_at, updated_at, sites) VALUES "
            "(?, 's', '{}', ?, ?, ?, 0, '2026-01-01 00:00:00', '2026-01-01 00:00:00', ?)",
            (study_id, config_hash, status, rounds, json.dumps(sites)))
    return study_id
