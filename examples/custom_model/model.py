"""Logistic regression in plain numpy: a study's own model module for fedcare.

fedcare never imports this file: each site runs it in its sandbox (no network, no files but
its job folder, CPU/memory/time limits) after its data steward approved the study's hash,
which covers this text. It gets arrays and returns arrays:

* fit(inputs) -> {"params": new weights, "train_loss": mean loss}
* scores(inputs) -> {"scores": (n, outputs) logits}

The weights are one flat vector of (features + 1) * outputs numbers (study: model.params);
outputs is 1 for a binary task (the positive class's log-odds), else one logit per class.
"""

import numpy as np


def _unpack(params, features, outputs):
    w = params.reshape(features + 1, outputs)
    return w[:-1], w[-1]


def _logits(params, x, outputs):
    x = x.reshape(len(x), -1).astype(np.float64)
    w, b = _unpack(params, x.shape[1], outputs)
    return x @ w + b


def _grad(params, x, y, outputs):
    """Mean cross-entropy and its gradient with respect to the flat weights."""
    z = _logits(params, x, outputs)
    if outputs == 1:
        p = 1.0 / (1.0 + np.exp(-z[:, 0]))
        target = y.astype(np.float64)
        loss = np.mean(np.logaddexp(0.0, z[:, 0]) - target * z[:, 0])
        dz = (p - target)[:, None]
    else:
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        onehot = np.eye(outputs)[y.astype(np.int64)]
        loss = -np.mean(np.sum(onehot * np.log(np.clip(p, 1e-300, None)), axis=1))
        dz = p - onehot
    xf = x.reshape(len(x), -1).astype(np.float64)
    gw = xf.T @ dz / len(x)
    gb = dz.mean(axis=0)
    return loss, np.concatenate([gw, gb[None, :]]).reshape(-1)


def fit(inputs):
    params = inputs["params"].copy()
    x, y = inputs["x"], inputs["y"]
    outputs = int(inputs["outputs"])
    lr, mu, decay = float(inputs["lr"]), float(inputs["mu"]), float(inputs["weight_decay"])
    batch, epochs, steps = int(inputs["batch_size"]), int(inputs["epochs"]), int(inputs["steps"])
    anchor = params.copy()  # the global model, for FedProx's proximal term
    rng = np.random.default_rng(int(inputs["seed"]))
    done, epoch = 0, 0
    while (steps and done < steps) or (not steps and epoch < epochs):
        epoch += 1
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch):
            rows = order[start:start + batch]
            _, g = _grad(params, x[rows], y[rows], outputs)
            params -= lr * (g + decay * params + mu * (params - anchor))
            done += 1
            if steps and done >= steps:
                break
    loss, _ = _grad(params, x, y, outputs)
    return {"params": params, "train_loss": np.float64(loss)}


def scores(inputs):
    return {"scores": _logits(inputs["params"], inputs["x"], int(inputs["outputs"]))}
