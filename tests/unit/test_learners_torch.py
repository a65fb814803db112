"""TorchLearner: exact batch order, FedProx/SCAFFOLD terms, validation, metrics."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from fedcare.core.dataset import TaskType
from fedcare.core.errors import ConfigError, DataError, ValidationError
from fedcare.core.messages import TrainConfig
from fedcare.core.params import Parameters
from fedcare.learners import MODEL_NAMES, Learner, TorchLearner
from fedcare.learners.metrics import PRIMARY_METRICS

SHAPES = {
    "logreg": (6,), "mlp": (6,), "cnn": (2, 8, 8), "resnet": (2, 8, 8), "lstm": (4, 3),
    "gru": (4, 3),
    "transformer": (6,),
}


def _data(shape=(6,), n=45, task=TaskType.BINARY, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    score = x.reshape(n, -1) @ rng.normal(size=int(np.prod(shape)))
    if task is TaskType.BINARY:
        y = (score > 0).astype(np.int64)
    elif task is TaskType.MULTICLASS:
        y = np.digitize(score, np.quantile(score, np.linspace(0, 1, classes + 1)[1:-1]))
    else:
        y = score.astype(np.float32)
    return x, y


def _learner(name="logreg", task=TaskType.BINARY, outputs=1, options=None, seed=0):
    return TorchLearner.from_zoo(name, SHAPES[name], outputs, task, options or {}, seed)


# ----------------------------------------------------------------------------- zoo smoke
@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize(("task", "outputs"), [(TaskType.BINARY, 1), (TaskType.MULTICLASS, 3),
                                                (TaskType.REGRESSION, 1)])
def test_every_model_fits_and_evaluates_every_task(name, task, outputs):
    learner = _learner(name, task, outputs)
    x, y = _data(SHAPES[name], n=20, task=task)
    start = learner.initial_parameters()

    result = learner.fit(start, x, y, TrainConfig(batch_size=8, lr=0.01), seed=1)
    metrics = learner.evaluate(result.parameters, x, y)

    assert isinstance(learner, Learner)
    assert result.num_examples == 20 and result.num_steps == 3
    assert result.parameters.spec == start.spec
    assert not result.parameters.allclose(start)
    # every metric a study may choose as primary, and the trivial prediction's score beside it
    expected = {"loss", *PRIMARY_METRICS[task]}
    assert expected | {f"trivial_{m}" for m in expected} <= set(metrics)
    assert all(type(v) is float and np.isfinite(v) for v in metrics.values())
    assert np.isfinite(result.metrics["train_loss"])


@pytest.mark.parametrize(("name", "options"), [("logreg", {}), ("mlp", {"dropout": 0.3}),
                                               ("transformer", {"dropout": 0.2}),
                                               ("lstm", {"layers": 2, "dropout": 0.5})])
def test_same_seed_gives_bitwise_identical_fits(name, options):
    x, y = _data(SHAPES[name])
    config = TrainConfig(local_epochs=2, batch_size=8, lr=0.05, optimizer="adam")
    runs = []
    for _ in range(2):
        learner = _learner(name, options=options)
        runs.append(learner.fit(learner.initial_parameters(), x, y, config, seed=9).parameters)
    other = learner.fit(learner.initial_parameters(), x, y, config, seed=10).parameters

    assert all(np.array_equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not runs[0].allclose(other, rtol=0, atol=0)


def test_initial_parameters_are_the_state_dict_in_order():
    learner = _learner("mlp", options={"hidden": [4]})

    params = learner.initial_parameters()

    assert list(params) == list(learner.model.state_dict())
    assert all(params[k].dtype == np.float32 for k in params)
    assert learner.spec == params.spec


# -------------------------------------------------------------------- exact training math
def _reference_fit(model: nn.Module, x, y, *, seed, lr, batch_size, epochs=1):
    """The loop fit() must equal: one permutation per epoch, perm[i:i+bs] batches."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32).reshape(-1, 1))
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        perm = rng.permutation(len(x))
        for i in range(0, len(x), batch_size):
            idx = torch.from_numpy(perm[i:i + batch_size])
            loss = nn.BCEWithLogitsLoss()(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("epochs", [1, 3])
def test_fit_equals_a_hand_written_loop(epochs):
    x, y = _data(n=45)
    learner = _learner("mlp", options={"hidden": [8]}, seed=4)
    start = learner.initial_parameters()
    torch.manual_seed(4)
    reference = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))

    got = learner.fit(start, x, y, TrainConfig(local_epochs=epochs, batch_size=32, lr=0.3),
                      seed=11)
    want = _reference_fit(reference, x, y, seed=11, lr=0.3, batch_size=32, epochs=epochs)

    assert got.num_steps == 2 * epochs
    assert all(np.allclose(got.parameters[k], want[k], rtol=0, atol=1e-6) for k in want)


def test_train_loss_is_the_batch_size_weighted_mean():
    x, y = _data(n=10)
    learner = _learner()
    start = learner.initial_parameters()
    w, b = (torch.from_numpy(start[k].copy()) for k in ("weight", "bias"))
    perm = np.random.default_rng(2).permutation(10)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32).reshape(-1, 1))
    losses, sizes = [], []
    for i in range(0, 10, 4):
        idx = torch.from_numpy(perm[i:i + 4])
        w.requires_grad_(True)
        b.requires_grad_(True)
        loss = nn.functional.binary_cross_entropy_with_logits(xt[idx] @ w.T + b, yt[idx])
        gw, gb = torch.autograd.grad(loss, [w, b])
        w, b = (w - 0.1 * gw).detach(), (b - 0.1 * gb).detach()
        losses.append(loss.item())
        sizes.append(len(idx))

    result = learner.fit(start, x, y, TrainConfig(batch_size=4, lr=0.1), seed=2)

    assert result.metrics["train_loss"] == pytest.approx(np.average(losses, weights=sizes))


def test_correction_is_added_to_the_gradient():
    x, y = _data(n=12)
    learner = _learner()
    start = learner.initial_parameters()
    rng = np.random.default_rng(0)
    correction = Parameters({k: rng.normal(size=v.shape).astype(np.float32)
                             for k, v in start.items()})
    one_step = TrainConfig(local_steps=1, batch_size=12, lr=0.5)

    plain = learner.fit(start, x, y, one_step, seed=0).parameters
    corrected = learner.fit(start, x, y, one_step, seed=0, correction=correction).parameters

    for k in start:  # w1 = w0 - lr * (g + c) = plain - lr * c
        assert np.allclose(corrected[k], plain[k] - 0.5 * correction[k], atol=1e-6)


def test_correction_against_a_hand_computed_step():
    x, y = _data(n=12)
    learner = _learner()
    start = learner.initial_parameters()
    c = {k: np.full(v.shape, 0.25, np.float32) for k, v in start.items()}
    w = torch.from_numpy(start["weight"].copy()).requires_grad_(True)
    b = torch.from_numpy(start["bias"].copy()).requires_grad_(True)
    logits = torch.from_numpy(x) @ w.T + b
    target = torch.from_numpy(y.astype(np.float32).reshape(-1, 1))
    gw, gb = torch.autograd.grad(
        nn.functional.binary_cross_entropy_with_logits(logits, target), [w, b])

    out = learner.fit(start, x, y, TrainConfig(local_steps=1, batch_size=12, lr=0.5), seed=0,
                      correction=Parameters(c)).parameters

    assert np.allclose(out["weight"], (w - 0.5 * (gw + 0.25)).detach().numpy(), atol=1e-6)
    assert np.allclose(out["bias"], (b - 0.5 * (gb + 0.25)).detach().numpy(), atol=1e-6)


def test_fedprox_with_huge_mu_stays_at_the_anchor():
    x, y = _data(n=45)
    learner = _learner()
    start = learner.initial_parameters()
    config = TrainConfig(local_epochs=20, batch_size=8, lr=0.001)

    free = learner.fit(start, x, y, config, seed=0).parameters
    prox = learner.fit(start, x, y, TrainConfig(local_epochs=20, batch_size=8, lr=0.001,
                                                proximal_mu=900.0), seed=0).parameters

    # steady state of w - w0 is about -grad / mu: ~1/900 of a gradient, versus 120 lr-steps
    drift = {k: np.abs(prox[k] - start[k]).max() for k in start}
    free_drift = {k: np.abs(free[k] - start[k]).max() for k in start}
    assert all(drift[k] < 0.05 * free_drift[k] for k in start)


def test_fedprox_adds_mu_times_distance_to_the_gradient():
    x, y = _data(n=12)
    learner = _learner()
    start = learner.initial_parameters()
    full_batch = {"batch_size": 12, "lr": 0.1}

    w1 = learner.fit(start, x, y, TrainConfig(local_steps=1, **full_batch), seed=0).parameters
    plain = learner.fit(start, x, y, TrainConfig(local_steps=2, **full_batch), seed=0).parameters
    prox = learner.fit(start, x, y, TrainConfig(local_steps=2, proximal_mu=3.0, **full_batch),
                       seed=0).parameters

    # step 1 has w == w_global (no term); step 2 adds mu * (w1 - w0) to the gradient
    for k in start:
        assert np.allclose(prox[k], plain[k] - 0.1 * 3.0 * (w1[k] - start[k]), atol=1e-6)


def test_local_steps_override_epochs_and_wrap_around():
    x, y = _data(n=45)
    learner = _learner()
    start = learner.initial_parameters()

    by_steps = learner.fit(start, x, y, TrainConfig(local_steps=5, batch_size=32), seed=0)
    by_epochs = learner.fit(start, x, y, TrainConfig(local_epochs=3, batch_size=32), seed=0)
    six_steps = learner.fit(start, x, y, TrainConfig(local_steps=6, batch_size=32), seed=0)

    assert by_steps.num_steps == 5 and by_epochs.num_steps == 6
    assert six_steps.parameters.allclose(by_epochs.parameters, rtol=0, atol=0)


def test_output_parameters_round_trip_and_are_independent_copies():
    x, y = _data()
    learner = _learner()
    first = learner.fit(learner.initial_parameters(), x, y, TrainConfig(), seed=0).parameters
    snapshot = first.copy()

    second = learner.fit(first, x, y, TrainConfig(), seed=1).parameters

    assert first.allclose(snapshot, rtol=0, atol=0)
    assert not second.allclose(first)
    assert not any(np.shares_memory(first[k], second[k]) for k in first)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_optimizers_with_momentum_and_weight_decay_train(optimizer):
    x, y = _data(n=200)
    learner = _learner()
    start = learner.initial_parameters()
    config = TrainConfig(local_epochs=10, lr=0.05, optimizer=optimizer, momentum=0.9,
                         weight_decay=1e-4)

    trained = learner.fit(start, x, y, config, seed=0).parameters

    assert learner.evaluate(trained, x, y)["accuracy"] > 0.9


def test_unknown_optimizer_is_refused_before_training():
    # Refused where the training config is made (core.limits), so it never reaches a learner.
    with pytest.raises(ValidationError, match="rmsprop"):
        TrainConfig(optimizer="rmsprop")


# ------------------------------------------------------------------------------ rejections
@pytest.mark.parametrize("mutate", [
    lambda p: {k: v for k, v in p.items() if k != "bias"},
    lambda p: {**p, "extra": np.zeros(2, np.float32)},
    lambda p: {**p, "weight": np.zeros((1, 7), np.float32)},
    lambda p: {**p, "weight": p["weight"].astype(np.float64)},
    lambda p: {**p, "bias": np.array([np.nan], np.float32)},
])
def test_wrong_layout_or_non_finite_parameters_are_rejected(mutate):
    x, y = _data()
    learner = _learner()
    bad = Parameters(mutate(dict(learner.initial_parameters())))

    with pytest.raises(ValidationError):
        learner.fit(bad, x, y, TrainConfig(), seed=0)
    with pytest.raises(ValidationError):
        learner.evaluate(bad, x, y)


def test_wrong_correction_layout_is_rejected():
    x, y = _data()
    learner = _learner()

    with pytest.raises(ValidationError, match="correction"):
        learner.fit(learner.initial_parameters(), x, y, TrainConfig(), seed=0,
                    correction=Parameters({"weight": np.zeros((1, 6), np.float32)}))


def test_wrong_feature_shape_is_a_data_error():
    x, y = _data(shape=(5,))
    learner = _learner()

    with pytest.raises(DataError, match="expects rows"):
        learner.fit(learner.initial_parameters(), x, y, TrainConfig(), seed=0)


def test_divergence_raises_a_data_error():
    x, y = _data(n=45)
    learner = _learner("mlp")

    with pytest.raises(DataError, match="diverged"):
        learner.fit(learner.initial_parameters(), x * 1e6, y.astype(np.float32) * 1e30,
                    TrainConfig(local_epochs=20, lr=1000.0), seed=0)


def test_nan_features_raise_at_the_first_step():
    x, y = _data(n=45, task=TaskType.REGRESSION)
    x[3, 0] = np.nan
    learner = _learner(task=TaskType.REGRESSION)

    with pytest.raises(DataError, match="at step"):
        learner.fit(learner.initial_parameters(), x, y, TrainConfig(batch_size=45), seed=0)


def test_zero_rows_cannot_be_trained_but_evaluate_to_nothing():
    learner = _learner()
    empty_x, empty_y = np.zeros((0, 6), np.float32), np.zeros(0, np.int64)

    with pytest.raises(DataError):
        learner.fit(learner.initial_parameters(), empty_x, empty_y, TrainConfig(), seed=0)
    assert learner.evaluate(learner.initial_parameters(), empty_x, empty_y) == {}


# --------------------------------------------------------------------------------- metrics
def test_binary_metrics_match_reference_formulas():
    from sklearn.metrics import log_loss, roc_auc_score

    x, y = _data(n=5000)  # > one evaluation batch
    x.flags.writeable = False  # read-only inputs are fine
    learner = _learner()
    params = learner.initial_parameters()
    logits = x @ params["weight"].T.astype(np.float64) + params["bias"]
    prob = 1 / (1 + np.exp(-logits[:, 0]))

    metrics = learner.evaluate(params, x, y)

    assert metrics["accuracy"] == pytest.approx(np.mean((logits[:, 0] > 0) == y))
    assert metrics["auc"] == pytest.approx(roc_auc_score(y, prob), abs=1e-6)
    assert metrics["loss"] == pytest.approx(log_loss(y, prob), rel=1e-5)


def test_auc_is_left_out_when_one_class_is_missing():
    x, _ = _data(n=20)
    learner = _learner()

    metrics = learner.evaluate(learner.initial_parameters(), x, np.ones(20, np.int64))

    assert "auc" not in metrics and "accuracy" in metrics


def test_regression_metrics():
    x, y = _data(n=30, task=TaskType.REGRESSION)
    learner = _learner(task=TaskType.REGRESSION)
    params = learner.initial_parameters()
    pred = (x @ params["weight"].T.astype(np.float64) + params["bias"])[:, 0]

    metrics = learner.evaluate(params, x, y)

    assert metrics["mse"] == pytest.approx(np.mean((pred - y) ** 2), rel=1e-5)
    assert metrics["mae"] == pytest.approx(np.mean(np.abs(pred - y)), rel=1e-5)
    assert metrics["loss"] == metrics["mse"]


def test_threads_sets_the_process_setting():
    TorchLearner.from_zoo("logreg", (3,), 1, TaskType.BINARY, {}, 0, threads=1)

    assert torch.get_num_threads() == 1
    with pytest.raises(ConfigError):
        TorchLearner(nn.Linear(2, 1), TaskType.BINARY, threads=0)


@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.0, 0.01),
                                                    (0.9, 0.01)])
def test_plain_sgd_matches_torch_optim_sgd(momentum: float, weight_decay: float) -> None:
    from fedcare.learners.torch_learner import PlainSGD

    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    b = copy.deepcopy(a)
    ours = PlainSGD(list(a.parameters()), lr=0.1, momentum=momentum, weight_decay=weight_decay)
    ref = torch.optim.SGD(b.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay)
    x, y = torch.randn(16, 6), torch.randn(16, 1)
    for _ in range(5):
        for model, opt in ((a, ours), (b, ref)):
            for p in model.parameters():
                p.grad = None
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)


def test_evaluation_batches_wide_models_without_changing_the_result(monkeypatch) -> None:
    import fedcare.learners.torch_learner as tl
    from fedcare.core.dataset import TaskType as TT

    assert tl.eval_batch_rows(131_000_000, 8) == 4      # a 500 MB MLP: a few rows at a time
    assert tl.eval_batch_rows(1_000_000, 100) == tl.EVAL_BATCH
    learner = tl.TorchLearner.from_zoo("mlp", (6,), 1, TT.BINARY, {"hidden": [16]}, seed=0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    params = learner.initial_parameters()
    whole = learner.evaluate(params, x, y)
    monkeypatch.setattr(tl, "EVAL_ACTIVATION_BUDGET", 7 * 16)  # -> 7 rows per batch
    assert tl.eval_batch_rows(sum(v.size for v in params.values()), 6) < 50
    assert learner.evaluate(params, x, y) == pytest.approx(whole)
