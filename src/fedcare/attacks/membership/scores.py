"""Per-example statistics of a trained model: the raw material of membership inference.

Both attacks look at how well the model fits each example. The loss attack uses the
per-example loss (Yeom et al. 2018). LiRA (Carlini et al. 2022) uses the logit-scaled
confidence in the true class, ``phi = log(p_y / (1 - p_y))``, because it is close to Gaussian
across models trained with and without the example, which the attack's likelihood ratio
assumes; it is computed from logits without forming ``p`` (no overflow at p -> 1).
"""

from __future__ import annotations

import numpy as np
import torch

from fedcare.core.dataset import TaskType
from fedcare.core.errors import ConfigError, DataError
from fedcare.core.learning import Learner
from fedcare.core.params import Parameters

#: rows per forward pass
BATCH = 4096


def model_outputs(learner: Learner, parameters: Parameters, x: np.ndarray) -> np.ndarray:
    """Raw outputs (logits) of ``learner``'s torch model with ``parameters``, shape (n, k)."""
    from fedcare.learners.torch_learner import TorchLearner

    if not isinstance(learner, TorchLearner):
        raise ConfigError(f"the privacy audit needs a PyTorch model; {learner.name!r} is not "
                          "one (scikit-learn models are not supported yet)")
    learner.spec.validate(parameters, what=f"parameters for model {learner.name!r}")
    state = {k: torch.from_numpy(np.array(v)) for k, v in parameters.items()}
    learner.model.load_state_dict(state, strict=False)  # integer buffers are not exchanged
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) == 0:
        raise DataError("no rows to score")
    model = learner.model
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = torch.cat([model(torch.from_numpy(x[i:i + BATCH]))
                             for i in range(0, len(x), BATCH)])
    finally:
        model.train(was_training)
    return out.double().numpy().reshape(len(x), -1)


def per_example_loss(task: TaskType, logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The training loss of each example: log-loss, cross-entropy or squared error."""
    z = np.asarray(logits, dtype=np.float64).reshape(len(logits), -1)
    if task is TaskType.BINARY:
        s, t = z[:, 0], np.asarray(y, dtype=np.float64).reshape(-1)
        return np.maximum(s, 0) - s * t + np.log1p(np.exp(-np.abs(s)))
    if task is TaskType.MULTICLASS:
        idx = np.asarray(y).reshape(-1).astype(np.int64)
        top = z.max(axis=1)
        lse = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
        return lse - z[np.arange(len(idx)), idx]
    return (z[:, 0] - np.asarray(y, dtype=np.float64).reshape(-1)) ** 2


def confidence_logit(task: TaskType, logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """LiRA's statistic ``log(p_y / (1 - p_y))`` (regression: minus the squared error).

    Binary: with logit ``s``, ``p_y = sigmoid(s)`` for y = 1 and ``sigmoid(-s)`` for y = 0, so
    phi is ``s`` or ``-s``. Multiclass: ``z_y - logsumexp(z_j, j != y)``.
    """
    z = np.asarray(logits, dtype=np.float64).reshape(len(logits), -1)
    if task is TaskType.BINARY:
        t = np.asarray(y, dtype=np.float64).reshape(-1)
        return z[:, 0] * (2.0 * t - 1.0)
    if task is TaskType.MULTICLASS:
        idx = np.asarray(y).reshape(-1).astype(np.int64)
        rows = np.arange(len(idx))
        zy = z[rows, idx]
        others = z.copy()
        others[rows, idx] = -np.inf
        top = others.max(axis=1)
        return zy - (top + np.log(np.exp(others - top[:, None]).sum(axis=1)))
    return -per_example_loss(task, z, y)
