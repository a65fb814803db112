"""The model zoo: every model builds, is seeded deterministically, and refuses bad options."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedcare.core.errors import ConfigError
from fedcare.learners import MODEL_NAMES, build_model
from fedcare.learners.models import describe_options

SHAPES = {
    "logreg": (7,), "mlp": (7,), "cnn": (1, 28, 28), "resnet": (1, 28, 28), "lstm": (5, 3),
    "gru": (5, 3),
    "transformer": (7,),
}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_maps_a_batch_to_outputs(name):
    model = build_model(name, SHAPES[name], 3, {}, seed=0)

    out = model(torch.randn(4, *SHAPES[name]))

    assert out.shape == (4, 3)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_has_only_float_state_and_no_batchnorm(name):
    model = build_model(name, SHAPES[name], 2, {}, seed=0)

    assert all(t.is_floating_point() for t in model.state_dict().values())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_same_seed_same_weights_and_global_rng_untouched(name):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)

    a = build_model(name, SHAPES[name], 2, {}, seed=5).state_dict()
    b = build_model(name, SHAPES[name], 2, {}, seed=5).state_dict()
    c = build_model(name, SHAPES[name], 2, {}, seed=6).state_dict()

    assert torch.equal(torch.rand(1), expected_next)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_logreg_is_exactly_a_seeded_linear(seed):
    model = build_model("logreg", (30,), 1, {}, seed=seed)
    torch.manual_seed(seed)
    reference = nn.Linear(30, 1)

    assert type(model) is nn.Linear
    assert torch.equal(model.weight, reference.weight)
    assert torch.equal(model.bias, reference.bias)


def test_mlp_without_dropout_is_a_plain_sequential():
    model = build_model("mlp", (30,), 1, {"hidden": [16, 8]}, seed=3)
    torch.manual_seed(3)
    reference = nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(),
                              nn.Linear(8, 1))

    ref_state = reference.state_dict()
    assert list(model.state_dict()) == list(ref_state)
    assert all(torch.equal(v, ref_state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("shape", [(3, 28, 28), (1, 5, 7), (2, 1, 1), (1, 32, 9)])
def test_cnn_handles_image_sizes(shape):
    model = build_model("cnn", shape, 10, {"channels": [4, 8, 8]}, seed=0)

    assert model(torch.randn(2, *shape)).shape == (2, 10)


def test_transformer_takes_sequences_and_options():
    model = build_model("transformer", (6, 4), 2, {"d_model": 16, "heads": 2, "layers": 1},
                        seed=0)

    assert model(torch.randn(3, 6, 4)).shape == (3, 2)


def test_recurrent_options_are_used():
    model = build_model("gru", (5, 3), 1, {"hidden": 12, "layers": 2}, seed=0)

    assert model.rnn.hidden_size == 12 and model.rnn.num_layers == 2


@pytest.mark.parametrize(("name", "shape", "options", "fragment"), [
    ("resnet50", (3,), {}, "valid models"),
    ("resnet", (3,), {}, "image"),
    ("resnet", (1, 8, 8), {"blocks": 0}, "blocks"),
    ("mlp", (3,), {"hidden": [0]}, "hidden"),
    ("mlp", (3,), {"channels": [4]}, "valid options"),
    ("mlp", (3,), {"dropout": 1.5}, "dropout"),
    ("cnn", (3,), {}, "image"),
    ("logreg", (2, 3), {}, "flat"),
    ("lstm", (3,), {}, "sequence"),
    ("transformer", (3,), {"d_model": 10, "heads": 4}, "divide"),
])
def test_bad_names_options_and_shapes_are_config_errors(name, shape, options, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_model(name, shape, 1, options, seed=0)


def test_describe_options_covers_every_model():
    described = describe_options()

    assert set(described) == set(MODEL_NAMES)
    assert "hidden" in described["mlp"] and "channels" in described["cnn"]
