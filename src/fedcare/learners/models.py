"""The built-in model zoo: small PyTorch models for tables, images and sequences.

Every model is initialised from a seed inside :func:`torch.random.fork_rng`, so building a
model never disturbs the caller's global RNG state and the same seed always gives the same
weights (every site of a study, and the hub, start from identical parameters).

No model uses BatchNorm: its ``num_batches_tracked`` buffer is an integer, which has no
meaningful federated average, and its running statistics leak per-site feature moments.
GroupNorm / LayerNorm normalise per example instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fedcare.core.errors import ConfigError
from fedcare.learners.options import ModelOptions, all_models, model_options

#: The PyTorch zoo: every registered model the torch backend builds.
MODEL_NAMES: tuple[str, ...] = tuple(
    n for n, o in all_models().items() if o.capabilities.backend == "torch")


def describe_options() -> dict[str, str]:
    """One line per zoo model (name -> description and options with defaults), for CLI help."""
    out = {}
    for name in MODEL_NAMES:
        cls = all_models()[name]
        opts = ", ".join(f"{k}={f.default!r} ({(f.description or '').split(': ', 1)[-1]})"
                         for k, f in cls.model_fields.items() if k != "name")
        out[name] = f"{cls.summary}; options: {opts or 'none'}"
    return out


def _expect_rank(name: str, input_shape: tuple[int, ...], ranks: tuple[int, ...],
                 what: str) -> None:
    if len(input_shape) not in ranks or any(d < 1 for d in input_shape):
        raise ConfigError(f"model {name!r} needs {what} input, got per-example shape "
                          f"{tuple(input_shape)}")


# -------------------------------------------------------------------------------------- models
def _mlp(input_shape: tuple[int, ...], num_outputs: int, hidden: list[int],
         dropout: float) -> nn.Sequential:
    """Linear/ReLU stack; with dropout 0 the layout equals a plain ``nn.Sequential`` MLP."""
    layers: list[nn.Module] = []
    if len(input_shape) > 1:
        layers.append(nn.Flatten())
    prev = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(prev, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        prev = h
    layers.append(nn.Linear(prev, num_outputs))
    return nn.Sequential(*layers)


def _cnn(input_shape: tuple[int, ...], num_outputs: int, channels: list[int]) -> nn.Sequential:
    """Conv3x3 -> GroupNorm -> ReLU -> MaxPool2 blocks, adaptive pool to <= 4x4, linear head."""
    c_in, height, width = input_shape
    layers: list[nn.Module] = []
    for c in channels:
        layers += [nn.Conv2d(c_in, c, kernel_size=3, padding=1),
                   nn.GroupNorm(math.gcd(c, 8), c), nn.ReLU()]
        if height >= 2 and width >= 2:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        c_in = c
    pooled = (min(4, height), min(4, width))
    layers += [nn.AdaptiveAvgPool2d(pooled), nn.Flatten(),
               nn.Linear(c_in * pooled[0] * pooled[1], num_outputs)]
    return nn.Sequential(*layers)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, 8), channels)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm, added to the input (He et al. 2016, "basic
    block"); a 1x1 convolution matches the shortcut when the stride or width changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _group_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = _group_norm(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          _group_norm(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


def _resnet(input_shape: tuple[int, ...], num_outputs: int, channels: list[int],
            blocks: int) -> nn.Sequential:
    """Conv3x3 stem, then per entry of ``channels`` a stage of ``blocks`` residual blocks
    (stages after the first start with stride 2 while the image is at least 2x2), global
    average pool, linear head. GroupNorm, not BatchNorm (see the module docstring)."""
    c_in, height, width = input_shape
    layers: list[nn.Module] = [nn.Conv2d(c_in, channels[0], 3, padding=1, bias=False),
                               _group_norm(channels[0]), nn.ReLU()]
    c_in = channels[0]
    for stage, c in enumerate(channels):
        for b in range(blocks):
            stride = 2 if stage > 0 and b == 0 and height >= 2 and width >= 2 else 1
            if stride == 2:
                height, width = (height + 1) // 2, (width + 1) // 2
            layers.append(ResidualBlock(c_in, c, stride))
            c_in = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_outputs)]
    return nn.Sequential(*layers)


class RecurrentClassifier(nn.Module):
    """An LSTM or GRU over (n, T, F); the head reads the top layer's last hidden state."""

    def __init__(self, cell: str, features: int, num_outputs: int, hidden: int, layers: int,
                 dropout: float) -> None:
        super().__init__()
        rnn_cls = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn_cls(features, hidden, num_layers=layers, batch_first=True,
                           dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Linear(hidden, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1, :])


class TransformerClassifier(nn.Module):
    """A small transformer encoder, mean-pooled, with a linear head.

    Tabular input (n, F): each feature is a token, ``x_f * w_f + e_f`` with a per-feature
    weight ``w_f`` and a learned feature embedding ``e_f`` (as in FT-Transformer, Gorishniy et
    al. 2021). Sequence input (n, T, F): each time step is a token, ``Linear(F) + p_t`` with a
    learned position embedding ``p_t``.
    """

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, d_model: int, heads: int,
                 layers: int, dropout: float) -> None:
        super().__init__()
        self.tabular = len(input_shape) == 1
        tokens = input_shape[0]
        if self.tabular:
            self.feature_weight = nn.Parameter(torch.randn(tokens, d_model) / math.sqrt(d_model))
            self.embed = None
        else:
            self.embed = nn.Linear(input_shape[1], d_model)
        self.token_embedding = nn.Parameter(torch.randn(tokens, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=2 * d_model,
                                           dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embed is None:
            tokens = x.unsqueeze(-1) * self.feature_weight + self.token_embedding
        else:
            tokens = self.embed(x) + self.token_embedding
        return self.head(self.norm(self.encoder(tokens).mean(dim=1)))


def _construct(name: str, shape: tuple[int, ...], out: int, o: dict[str, Any]) -> nn.Module:
    if name == "logreg":
        _expect_rank(name, shape, (1,), "flat (n, features)")
        return nn.Linear(shape[0], out)
    if name == "mlp":
        _expect_rank(name, shape, (1, 2, 3), "flat (n, features)")
        return _mlp(shape, out, o["hidden"], o["dropout"])
    if name == "cnn":
        _expect_rank(name, shape, (3,), "image (n, channels, height, width)")
        return _cnn(shape, out, o["channels"])
    if name == "resnet":
        _expect_rank(name, shape, (3,), "image (n, channels, height, width)")
        return _resnet(shape, out, o["channels"], o["blocks"])
    if name in ("lstm", "gru"):
        _expect_rank(name, shape, (2,), "sequence (n, time, features)")
        return RecurrentClassifier(name, shape[1], out, o["hidden"], o["layers"], o["dropout"])
    _expect_rank(name, shape, (1, 2), "tabular (n, features) or sequence (n, time, features)")
    if o["d_model"] % o["heads"]:
        raise ConfigError(f"transformer heads={o['heads']} must divide d_model={o['d_model']}")
    return TransformerClassifier(shape, out, o["d_model"], o["heads"], o["layers"], o["dropout"])


def build_model(name: str, input_shape: tuple[int, ...], num_outputs: int,
                options: Mapping[str, Any] | ModelOptions, seed: int) -> nn.Module:
    """Build zoo model ``name`` for per-example ``input_shape``, initialised from ``seed``.

    ``logreg`` is exactly ``nn.Linear(features, num_outputs)`` built right after
    ``torch.manual_seed(seed)``. The caller's global RNG state is left untouched.
    """
    if name not in MODEL_NAMES:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}")
    if isinstance(num_outputs, bool) or not isinstance(num_outputs, int) or num_outputs < 1:
        raise ConfigError(f"num_outputs must be a positive integer, got {num_outputs!r}")
    parsed = (options if isinstance(options, ModelOptions)
              else model_options(name, dict(options))).options()
    shape = tuple(int(d) for d in input_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _construct(name, shape, num_outputs, parsed)
