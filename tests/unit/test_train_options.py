"""[train] lr_schedule, augment and augment_shift, and the resnet model: validated with the
option's name and range, left out of hashes and tasks at their defaults, deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import fedcare
from fedcare.config import content_hash, parse_config
from fedcare.core.dataset import TaskType
from fedcare.core.errors import ConfigError, ValidationError
from fedcare.core.messages import TrainConfig
from fedcare.learners import TorchLearner
from fedcare.learners.torch_learner import augment_images, cosine_lr, fit_steps

BUILTIN = {"source": "builtin"}


def _images(n: int = 24, shape: tuple[int, ...] = (1, 8, 8), seed: int = 0
            ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((n, *shape), dtype=np.float32)
    y = (x[:, 0, :, : shape[2] // 2].mean(axis=(1, 2)) > 0.5).astype(np.int64)
    return x, y


# -- validation -------------------------------------------------------------------------------
@pytest.mark.parametrize(("train", "fragment"), [
    ({"lr_schedule": "step"}, r"'train.lr_schedule'.*'constant' or 'cosine'"),
    ({"augment": "rotate"}, r"'train.augment'.*'flip_shift'"),
    ({"augment_shift": 0}, r"'train.augment_shift'.*valid range 1\.\.64"),
    ({"augment_shift": 65}, r"'train.augment_shift'.*valid range 1\.\.64"),
])
def test_bad_train_options_are_refused_naming_the_option_and_range(train: dict,
                                                                   fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_config({"data": BUILTIN, "model": {"name": "cnn"}, "train": train})


def test_augmentation_needs_an_image_model() -> None:
    with pytest.raises(ConfigError, match=r"'train.augment': flip changes images; model 'mlp'"):
        parse_config({"data": BUILTIN, "model": {"name": "mlp"}, "train": {"augment": "flip"}})
    parse_config({"data": BUILTIN, "model": {"name": "resnet"}, "train": {"augment": "flip"}})


@pytest.mark.parametrize(("field", "value", "fragment"), [
    ("lr_schedule", "linear", "lr_schedule must be one of constant, cosine"),
    ("augment", "mixup", "augment must be one of none, flip, shift, flip_shift"),
    ("augment_shift", 0, r"augment_shift must be in 1\.\.64"),
    ("augment_shift", 10**6, r"augment_shift must be in 1\.\.64"),
    ("augment_shift", True, "augment_shift must be an integer"),
])
def test_a_task_with_bad_train_options_is_refused(field: str, value: object,
                                                  fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        TrainConfig.from_json({field: value})


def test_new_options_travel_only_when_set() -> None:
    plain = TrainConfig()
    assert set(plain.to_json()) == {"local_epochs", "local_steps", "batch_size", "lr",
                                    "optimizer", "momentum", "weight_decay", "proximal_mu"}
    tuned = TrainConfig(lr_schedule="cosine", augment="flip_shift", augment_shift=3)
    assert TrainConfig.from_json(tuned.to_json()) == tuned
    assert tuned.to_json()["augment_shift"] == 3
    # the study section and the wire config have the same keys: the hub builds one from the other
    cfg = parse_config({"data": BUILTIN, "model": {"name": "cnn"},
                        "train": {"lr_schedule": "cosine", "augment": "shift"}})
    assert TrainConfig(**cfg.train.model_dump()).augment == "shift"


def test_the_content_hash_changes_only_when_an_option_leaves_its_default() -> None:
    base = {"data": BUILTIN, "model": {"name": "cnn"}}
    h = content_hash(parse_config(base))
    same = {**base, "train": {"lr_schedule": "constant", "augment": "none", "augment_shift": 2}}
    assert content_hash(parse_config(same)) == h
    for train in ({"lr_schedule": "cosine"}, {"augment": "flip"}, {"augment_shift": 3}):
        assert content_hash(parse_config({**base, "train": train})) != h, train


def test_resnet_options_are_hashed() -> None:
    a = parse_config({"data": BUILTIN, "model": {"name": "resnet", "blocks": 1}})
    b = parse_config({"data": BUILTIN, "model": {"name": "resnet", "blocks": 2}})
    assert content_hash(a) != content_hash(b)


# -- schedule ---------------------------------------------------------------------------------
def test_cosine_goes_from_lr_to_near_zero() -> None:
    assert cosine_lr(0.1, 0, 10) == pytest.approx(0.1)
    assert cosine_lr(0.1, 5, 10) == pytest.approx(0.05)
    assert 0 < cosine_lr(0.1, 9, 10) < 0.003
    assert fit_steps(25, TrainConfig(local_epochs=2, batch_size=10)) == 6
    assert fit_steps(25, TrainConfig(local_steps=4)) == 4


def test_cosine_fit_takes_the_scheduled_steps() -> None:
    # plain SGD on logreg: replaying the steps with cosine_lr by hand gives the same weights
    x = np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    config = TrainConfig(local_epochs=2, batch_size=4, lr=0.5, lr_schedule="cosine")
    learner = TorchLearner.from_zoo("logreg", (3,), 1, TaskType.BINARY, {}, seed=0)
    start = learner.initial_parameters()
    got = learner.fit(start, x, y, config, seed=7).parameters
    w = torch.tensor(start["weight"]).requires_grad_()
    b = torch.tensor(start["bias"]).requires_grad_()
    rng, step = np.random.default_rng(7), 0
    for _ in range(2):
        perm = rng.permutation(12)
        for s in range(0, 12, 4):
            idx = perm[s:s + 4]
            out = torch.from_numpy(x[idx]) @ w.T + b
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                out, torch.from_numpy(y[idx].reshape(-1, 1).astype(np.float32)))
            gw, gb = torch.autograd.grad(loss, [w, b])
            with torch.no_grad():
                lr = cosine_lr(0.5, step, 6)
                w -= lr * gw
                b -= lr * gb
            step += 1
    np.testing.assert_allclose(got["weight"], w.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["bias"], b.detach().numpy(), rtol=1e-5, atol=1e-6)


# -- augmentation -----------------------------------------------------------------------------
def test_flip_mirrors_some_images_and_leaves_the_input_alone() -> None:
    x = torch.from_numpy(_images(32)[0])
    before = x.clone()
    out = augment_images(x, "flip", 2, np.random.default_rng(0))
    assert torch.equal(x, before)
    mirrored = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True))
    assert 0 < sum(mirrored) < 32


def test_shift_moves_each_image_by_at_most_the_shift_repeating_edges() -> None:
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    out = augment_images(x, "shift", 2, np.random.default_rng(3))
    assert out.shape == x.shape
    for o, i in zip(out, x, strict=True):
        padded = torch.nn.functional.pad(i[None], (2, 2, 2, 2), mode="replicate")[0]
        windows = [padded[:, dy:dy + 6, dx:dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(o, w) for w in windows)


def test_augmentation_refuses_non_image_batches() -> None:
    with pytest.raises(Exception, match="needs image batches"):
        augment_images(torch.zeros(4, 3), "flip", 2, np.random.default_rng(0))


@pytest.mark.parametrize("model", ["cnn", "resnet"])
def test_augmented_fits_are_reproducible_from_the_seed(model: str) -> None:
    x, y = _images()
    options = {"channels": [4]} if model == "cnn" else {"channels": [4, 8]}
    learner = TorchLearner.from_zoo(model, (1, 8, 8), 1, TaskType.BINARY, options, seed=0)
    start = learner.initial_parameters()
    config = TrainConfig(local_epochs=2, batch_size=8, lr=0.01, optimizer="adam",
                         augment="flip_shift", lr_schedule="cosine")
    a = learner.fit(start, x, y, config, seed=5).parameters
    b = learner.fit(start, x, y, config, seed=5).parameters
    c = learner.fit(start, x, y, config, seed=6).parameters
    plain = learner.fit(start, x, y, TrainConfig(local_epochs=2, batch_size=8, lr=0.01,
                                                 optimizer="adam"), seed=5).parameters
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for k in a)
    assert any(not np.array_equal(a[k], plain[k]) for k in a)


def test_an_augmented_image_study_is_reproducible_and_multiclass_npz_works(
        tmp_path: Path) -> None:
    # A small MedMNIST-format file with 3 classes (uint8 (n, H, W), labels (n, 1)): the
    # official test split is spread over the sites, the resnet trains with augmentation.
    rng = np.random.default_rng(0)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 3, size=(n, 1))
        x = rng.integers(0, 40, size=(n, 12, 12)).astype(np.uint8)
        for k in range(3):  # class k: a bright band in rows 4k..4k+3
            x[y[:, 0] == k, 4 * k:4 * k + 4, :] += 200
        return x, y

    (xtr, ytr), (xva, yva), (xte, yte) = split(150), split(15), split(60)
    np.savez(tmp_path / "three.npz", train_images=xtr, train_labels=ytr, val_images=xva,
             val_labels=yva, test_images=xte, test_labels=yte)
    cfg = {"study": {"rounds": 3, "seed": 1},
           "data": {"source": "npz", "path": str(tmp_path / "three.npz"), "sites": 3},
           "model": {"name": "resnet", "channels": [4, 8]},
           "train": {"local_epochs": 2, "batch_size": 10, "lr": 0.03, "optimizer": "adam",
                     "augment": "shift", "augment_shift": 1, "lr_schedule": "cosine"},
           "baselines": {"local": True, "centralized": True},
           "run": {"evaluate_every": 0, "workers": 1}}
    first, second = fedcare.simulate(cfg), fedcare.simulate(cfg)
    metrics = first.final["global_metrics"]
    assert "accuracy" in metrics and "auc" not in metrics
    assert metrics["accuracy"] > 0.6  # chance is 1/3
    assert first.final == second.final
    assert first.baselines["centralized"]["global_metrics"] == \
        second.baselines["centralized"]["global_metrics"]
    assert set(first.baselines["local"]["site_metrics"]) == {"site-1", "site-2", "site-3"}


@pytest.mark.parametrize("name", ["breast_cancer.toml", "breastmnist.toml", "dermamnist.toml"])
def test_the_example_studies_are_valid(name: str) -> None:
    from fedcare.config import load_config

    load_config(Path(__file__).resolve().parents[2] / "examples" / name)


def test_a_hub_task_carries_the_options_to_the_site() -> None:
    # The hub builds the task's train header from the study's [train] section; the node
    # decodes it and fits with it: the options reach a networked site unchanged.
    from fedcare.core.messages import Task, TaskKind
    from fedcare.core.params import Parameters
    from fedcare.core.wire import decode_task, encode_task

    cfg = parse_config({"data": BUILTIN, "model": {"name": "resnet"},
                        "train": {"lr_schedule": "cosine", "augment": "flip_shift",
                                  "augment_shift": 3}})
    train = TrainConfig(**cfg.train.model_dump())
    task = Task(task_id="s/r1/a1/site-1/fit", study="s", round=1, site="site-1",
                kind=TaskKind.FIT, parameters=Parameters({"w": np.zeros(2, np.float32)}),
                train=train)
    assert decode_task(encode_task(task)).train == train
    plain = Task(task_id="s/r1/a1/site-1/fit", study="s", round=1, site="site-1",
                 kind=TaskKind.FIT, parameters=Parameters({"w": np.zeros(2, np.float32)}))
    assert b"augment" not in encode_task(plain)  # old nodes still read a default study's task
