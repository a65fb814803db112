"""The ensemble's growth as the round engine's rounds: one fixed set of named arrays that is
both the model the hub sends and, with the site's sums in it, the update a site returns.

The state is :meth:`Ensemble.to_arrays` plus ``phase`` (0: the split candidates are not
known yet, 1: growing), ``hyper`` (the options the hub's step needs, so the strategy needs no
``[model]`` section) and three *sum slots* (:data:`SUMS`): ``sketch`` (fine counts),
``labels`` (label sum, rows) and ``hist`` (the level's gradient/hessian histograms, room for
the deepest level). A site fills the slots (:func:`site_sums`); the hub adds the sites' slots
and takes one step (:func:`advance`): round 1 reads the split candidates and the base score
off the summed sketch, every later round grows one level of one tree
(:func:`~fedcare.trees.split.grow_level`).

The sketch grid is public: the sites' features arrive standardized by the federation's mean
and std (the study's round-0 statistics, themselves a secure sum in a secure study), so the
fine grid is fixed on ``[-GRID, GRID]`` standard deviations and no site reveals its extremes
(values beyond fall in the end bins). Every value leaving a site is a sum, so secure
aggregation can carry all of it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedcare.core.errors import ValidationError
from fedcare.trees.ensemble import NODE_ARRAYS, Ensemble, base_margin, initial_base_score
from fedcare.trees.histogram import (
    bin_matrix,
    grad_hess,
    level_histograms,
    route_rows,
    tree_margin,
)
from fedcare.trees.options import TreeOptions
from fedcare.trees.sketch import PAD, cut_points, local_fine_counts
from fedcare.trees.split import grow_level

#: The public sketch grid, in standard deviations of the federation's standardization.
GRID = 8.0
#: The arrays a site fills with its sums (every other array is state, sent back unchanged).
SUMS = ("sketch", "labels", "hist")
OBJECTIVES = ("binary:logistic", "reg:squarederror")
SKETCH, GROW = 0.0, 1.0


def _hyper(o: TreeOptions) -> np.ndarray:
    given = o.base_score is not None
    return np.array([o.learning_rate, o.reg_lambda, o.gamma, o.min_child_weight,
                     OBJECTIVES.index(o.objective), float(given),
                     o.base_score if o.base_score is not None else 0.0], dtype=np.float64)


def state_shapes(options: TreeOptions, n_features: int) -> dict[str, tuple[int, ...]]:
    """Every array's shape, computed without allocating (a saved model's header is checked
    against these before anything is built from it)."""
    o, f = options, int(n_features)
    nodes = (o.n_trees, 2 ** (o.max_depth + 1) - 1)
    return {"cuts": (f, o.max_bin - 1), "base_score": (1,),
            **dict.fromkeys(NODE_ARRAYS, nodes), "phase": (1,), "hyper": (7,),
            "sketch": (f, o.sketch_bins), "labels": (2,),
            "hist": (2 ** (o.max_depth - 1), f, o.max_bin + 1, 2)}


def initial_state(options: TreeOptions, n_features: int) -> dict[str, np.ndarray]:
    """The state before the sketch round: no split candidates, no trees."""
    cuts = np.full((int(n_features), options.max_bin - 1), PAD)
    base = 0.5 if options.objective == "binary:logistic" else 0.0
    shapes = state_shapes(options, n_features)
    state = dict(Ensemble.empty(options, cuts, base).to_arrays())
    state.update({"phase": np.array([SKETCH]), "hyper": _hyper(options)})
    state.update({k: np.zeros(shapes[k]) for k in SUMS})
    return {k: np.array(v, dtype=np.float64) for k, v in state.items()}


def options_of(state: Mapping[str, np.ndarray]) -> TreeOptions:
    """The options a state was made with (its shapes and ``hyper``)."""
    h = np.asarray(state["hyper"], np.float64)
    if h.shape != (7,):
        raise ValidationError(f"tree state 'hyper' must be (7,), got {h.shape}")
    n_trees, n_nodes = np.asarray(state["status"]).shape
    return TreeOptions(objective=OBJECTIVES[int(h[4])],  # type: ignore[arg-type]
                       n_trees=n_trees, max_depth=int(np.log2(n_nodes + 1)) - 1,
                       learning_rate=float(h[0]), reg_lambda=float(h[1]), gamma=float(h[2]),
                       min_child_weight=float(h[3]),
                       max_bin=int(np.asarray(state["cuts"]).shape[1]) + 1,
                       sketch_bins=int(np.asarray(state["sketch"]).shape[1]),
                       base_score=float(h[6]) if h[5] else None)


def ensemble(state: Mapping[str, np.ndarray], options: TreeOptions | None = None) -> Ensemble:
    return Ensemble.from_arrays(dict(state), options or options_of(state))


def _grid(n_features: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full(n_features, -GRID), np.full(n_features, GRID)


def site_sums(state: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray,
              options: TreeOptions) -> dict[str, np.ndarray]:
    """This site's contribution to the round's step: fine counts and label sums (sketch
    round) or the histograms of the level being grown, each in its slot (zeros elsewhere)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    out = {k: np.zeros_like(np.asarray(state[k], np.float64)) for k in SUMS}
    if float(state["phase"][0]) == SKETCH:
        out["sketch"][:] = local_fine_counts(x, *_grid(x.shape[1]), options.sketch_bins)
        out["labels"][:] = [y.sum(), len(y)]
        return out
    ens = ensemble(state, options)
    step = ens.next_step()
    if step is None:  # every tree grown: nothing left to sum
        return out
    tree, level = step
    binned = bin_matrix(x, ens.cuts)
    margin = np.full(len(y), base_margin(ens.base_score, ens.objective))
    for t in range(tree):
        margin += tree_margin(binned, ens, t)
    g, h = grad_hess(y, margin, ens.objective)
    nodes = route_rows(binned, ens, tree, level)
    out["hist"][: 2 ** level] = level_histograms(binned, g, h, nodes, level, ens.max_bin)
    return out


def advance(state: Mapping[str, np.ndarray], sums: Mapping[str, np.ndarray],
            options: TreeOptions | None = None) -> dict[str, np.ndarray]:
    """The next state from the round's summed slots (:data:`SUMS`), sum slots emptied."""
    o = options or options_of(state)
    new = {k: np.array(v, dtype=np.float64, copy=True) for k, v in state.items()}
    for k in SUMS:
        new[k][...] = 0.0
    if float(new["phase"][0]) == SKETCH:
        sketch = np.asarray(sums["sketch"], np.float64)
        cuts = cut_points(sketch, *_grid(sketch.shape[0]), o.max_bin)
        label_sum, rows = (float(v) for v in sums["labels"])
        base = (o.base_score if o.base_score is not None
                else initial_base_score(label_sum, rows, o.objective))
        ens = Ensemble.empty(o, cuts, base)
        new["phase"][0] = GROW
    else:
        ens = ensemble(state, o)
        step = ens.next_step()
        if step is not None:
            tree, level = step
            hist = np.asarray(sums["hist"], np.float64)[: 2 ** level]
            ens = grow_level(ens, tree, level, hist, o)
    new.update({k: np.asarray(v, np.float64) for k, v in ens.to_arrays().items()})
    return new


def complete_trees(state: Mapping[str, np.ndarray]) -> int:
    if float(state["phase"][0]) == SKETCH:
        return 0
    return ensemble(state).complete_trees()


def predict_margin(state: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Margins from the complete trees (the base score alone before the first tree)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    ens = ensemble(state)
    if float(state["phase"][0]) == SKETCH:
        return np.full(len(x), base_margin(ens.base_score, ens.objective))
    return ens.predict_margin(x)


def raw_scale(ens: Ensemble, mean: np.ndarray | None, std: np.ndarray | None) -> Ensemble:
    """The ensemble on the features' raw scale: every split candidate ``c`` of a feature
    standardized by (mean, std) becomes ``c * std + mean`` (monotone: every row takes the same
    branch), padding kept."""
    if mean is None or std is None:
        return ens
    from dataclasses import replace

    m = np.asarray(mean, np.float64).reshape(-1, 1)
    s = np.asarray(std, np.float64).reshape(-1, 1)
    cuts = np.where(ens.cuts < PAD, ens.cuts * s + m, PAD)
    return replace(ens, cuts=cuts)
