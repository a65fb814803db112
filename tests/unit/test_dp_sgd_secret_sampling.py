"""DP-SGD's Poisson sample is secret to the site (audit F8, dpsgd_seed.py).

The accountant counts amplification by subsampling (q = batch / rows), which holds only if the
adversary - the hub - cannot tell which rows each step used. The hub knows the fit's seed
(study seed, round, site index: ``site_round_seed``), so rows drawn from it are public.
Observed here as an attacker would: which rows the model saw at step 1 (a forward hook on the
model; row i carries i in its first feature), against the hub's recomputation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from fedcare.config import parse_config
from fedcare.core.messages import TrainConfig
from fedcare.core.seeds import site_round_seed
from fedcare.engine.learner_factory import ModelShape, make_learner
from fedcare.learners.torch_learner import TorchLearner, dp_sgd_sample_rate

ROWS, BATCH = 120, 16
SEED = site_round_seed(7, 1, 0)  # what SiteExecutor passes: (study.seed = 7, round 1, site 0)
CFG = parse_config({
    "study": {"name": "dpsgd", "seed": 7, "rounds": 3},
    "data": {"source": "federation", "dataset": "breast", "label": "target",
             "features": [f"f{i}" for i in range(8)], "standardize": False},
    "model": {"name": "logreg"}, "train": {"batch_size": BATCH, "lr": 0.1},
    "privacy": {"mode": "dp_sgd", "clip": 1.0, "noise_multiplier": 1.1, "delta": 1e-5}})


def _data() -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(1).normal(size=(ROWS, 8)).astype(np.float32)
    y = (x[:, 1] > 0).astype(np.float32)
    x[:, 0] = np.arange(ROWS)  # row i says it is row i
    return x, y


def _first_batch(**learner_kw: Any) -> list[int]:
    """The rows of the first DP-SGD step of one fit, as the model saw them."""
    learner = make_learner(CFG, ModelShape.of_federated(CFG.data), rows=ROWS, **learner_kw)
    assert isinstance(learner, TorchLearner) and learner.dp is not None
    batches: list[list[int]] = []

    def record(_module: Any, args: tuple[torch.Tensor, ...]) -> None:
        batches.append(sorted(int(v) for v in args[0][:, 0].tolist()))

    handle = learner.model.register_forward_pre_hook(record)
    try:
        x, y = _data()
        learner.fit(learner.initial_parameters(), x, y, TrainConfig(batch_size=BATCH, lr=0.1),
                    seed=SEED)
    finally:
        handle.remove()
    return batches[0]


def _hub_recomputes() -> list[int]:
    """What the hub rebuilds from public facts, as the audit did."""
    q = dp_sgd_sample_rate(ROWS, BATCH)
    return np.flatnonzero(np.random.default_rng(SEED).random(ROWS) < q).tolist()


@pytest.mark.parametrize("kw", [{"seeded": False}, {}], ids=["node", "simulation default"])
def test_the_same_public_seed_samples_different_rows_the_hub_cannot_recompute(
        kw: dict[str, Any]) -> None:
    first, second = _first_batch(**kw), _first_batch(**kw)
    assert first and second
    assert first != second
    assert _hub_recomputes() not in (first, second)


def test_seeded_is_an_explicit_opt_in_and_its_sample_is_public() -> None:
    """The opt-in for reproducible tests: the same rows every time - and the hub's."""
    assert _first_batch(seeded=True) == _first_batch(seeded=True) == _hub_recomputes()
