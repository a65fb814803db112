from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedcare.core import Parameters, ParamSpec, TrainConfig, ValidationError


def test_parameters_are_read_only() -> None:
    p = Parameters({"w": np.zeros(3, np.float32)})
    with pytest.raises(ValueError):
        p["w"][0] = 1.0


def test_integer_arrays_are_refused_with_reason() -> None:
    with pytest.raises(ValidationError, match="int64"):
        Parameters({"steps": np.zeros(1, np.int64)})


@given(st.lists(hnp.array_shapes(min_dims=0, max_dims=3, max_side=5), min_size=1, max_size=5))
def test_flatten_unflatten_round_trip(shapes: list[tuple[int, ...]]) -> None:
    rng = np.random.default_rng(0)
    p = Parameters({f"p{i}": rng.normal(size=s).astype(np.float32) for i, s in enumerate(shapes)})
    back = Parameters.unflatten(p.flatten(), p.spec)
    assert back.allclose(p, rtol=0, atol=0) and back.spec == p.spec


def test_spec_json_round_trip() -> None:
    p = Parameters({"a": np.zeros((2, 3), np.float32), "b": np.zeros((), np.float64)})
    assert ParamSpec.from_json(p.spec.to_json()) == p.spec


def test_unflatten_rejects_wrong_length() -> None:
    spec = Parameters({"a": np.zeros(3, np.float32)}).spec
    with pytest.raises(ValidationError):
        Parameters.unflatten(np.zeros(4, np.float32), spec)


@pytest.mark.parametrize("kwargs", [{"lr": 0}, {"batch_size": 0}, {"local_epochs": 0},
                                    {"proximal_mu": -1.0}])
def test_train_config_rejects_impossible_values(kwargs: dict) -> None:
    with pytest.raises(ValidationError):
        TrainConfig(**kwargs)
