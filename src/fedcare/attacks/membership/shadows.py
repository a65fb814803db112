"""Shadow models for LiRA: the same architecture and training recipe on random halves.

The attacker (here: the auditor, who holds the site's rows) trains ``n`` shadow models, each
from its own initialisation on a random half of the candidate examples (balanced so every
example is IN for half of them), then records every shadow's confidence on every candidate.

Approximation, stated: the target was trained federatedly on every site's data for
``rounds x local_epochs`` local passes; a shadow is trained centrally, only on candidates,
for the same number of passes over its data. Carlini et al. show LiRA is robust to such
mismatches in the shadows' training set; the audit is therefore a lower bound on the risk a
better-informed attacker poses, which is what an audit should say.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedcare.attacks.membership.attacks import balanced_membership
from fedcare.attacks.membership.scores import confidence_logit, model_outputs
from fedcare.core.dataset import TaskType
from fedcare.core.learning import Learner
from fedcare.core.messages import TrainConfig

ShadowProgress = Callable[[int, int], None]


def train_shadows(make_learner: Callable[[int], Learner], x: np.ndarray, y: np.ndarray,
                  task: TaskType, train: TrainConfig, n_shadows: int, *, seed: int,
                  progress: ShadowProgress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(confidences, membership)``, both (n_shadows, len(x)).

    ``make_learner(k)`` builds shadow k's learner with initial weights from seed ``k``.
    """
    membership = balanced_membership(n_shadows, len(x), seed)
    conf = np.empty((n_shadows, len(x)), dtype=np.float64)
    for k in range(n_shadows):
        learner = make_learner(seed + 1 + k)
        rows = np.flatnonzero(membership[k])
        fit = learner.fit(learner.initial_parameters(), x[rows], y[rows], train,
                          seed=seed + 1000 + k)
        conf[k] = confidence_logit(task, model_outputs(learner, fit.parameters, x), y)
        if progress is not None:
            progress(k + 1, n_shadows)
    return conf, membership
