"""Histogram gradient-boosted trees as fixed-shape arrays: the numeric core of federated
XGBoost shared by the site (histograms) and the hub (splits), pure numpy.

The whole ensemble - and where its growth stands - is one set of named arrays of fixed shape
(:func:`initial_state`), so it travels as an ordinary fedcare model and every round is one
step (:func:`advance`): round 1 pools the sites' quantile sketches into split candidates and
the base score; every later round grows one level of one tree from the sites' summed
gradient/hessian histograms. A site only ever contributes sums (``sketch``, ``labels``,
``hist``), so the hub needs nothing but their total - which secure aggregation gives it.

Algorithm: Chen & Guestrin, "XGBoost: A Scalable Tree Boosting System" (KDD 2016): second-
order split gain ``G_L^2/(H_L+lambda) + G_R^2/(H_R+lambda) - G^2/(H+lambda)`` compared with
``gamma``, leaf weight ``-G/(H+lambda)`` scaled by the learning rate, ``min_child_weight`` on
each child's hessian sum, and the sparsity-aware default direction (missing values go to
whichever side gains more). Split candidates are the federation's approximate quantiles
(a weighted quantile sketch over a fixed fine grid, as in the federated setting of
SecureBoost's successors): the fine grid is public (the features arrive standardized by the
federation's mean and std), so each site's fine counts are a sum the hub can pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

#: Fine grid of the quantile sketch: FINE bins over [-GRID, GRID] standard deviations (values
#: beyond fall into the end bins); split candidates are quantiles read from its counts.
FINE = 1024
GRID = 8.0
#: Padding of the unused split candidates of a feature (finite: models are checked finite).
NO_CUT = float(np.finfo(np.float64).max)
#: ``status`` of a node.
ABSENT, OPEN, SPLIT, LEAF = 0.0, 1.0, 2.0, 3.0
#: ``cursor[0]``: the phase of growth.
SKETCH, GROW, DONE = 0.0, 1.0, 2.0
OBJECTIVES = ("binary:logistic", "reg:squarederror")
#: The arrays a site fills with its sums (every other array is state, sent back unchanged).
SUMS = ("sketch", "labels", "hist")
#: The marker a federated site's learner gets from the strategy's site half: "contribute your
#: sums" (without it the learner grows the ensemble alone, as the baselines do).
SUMS_ONLY_KEY = "sums_only"


@dataclass(frozen=True)
class Hyper:
    """The ensemble's shape and its regularisation (one study's tree options)."""

    n_features: int
    n_trees: int
    max_depth: int
    max_bin: int
    learning_rate: float
    reg_lambda: float
    gamma: float
    min_child_weight: float
    objective: str = "binary:logistic"
    base_score: float | None = None

    @property
    def nodes(self) -> int:
        return 2 ** (self.max_depth + 1) - 1

    def vector(self) -> np.ndarray:
        """The options the hub's step reads (``base_score``: flag and value)."""
        given = self.base_score is not None
        return np.array([self.learning_rate, self.reg_lambda, self.gamma, self.min_child_weight,
                         self.max_depth, OBJECTIVES.index(self.objective), float(given),
                         self.base_score if given else 0.0], dtype=np.float64)


def initial_state(h: Hyper) -> dict[str, np.ndarray]:
    """An empty ensemble waiting for the sketch round."""
    t, n, f, b = h.n_trees, h.nodes, h.n_features, h.max_bin
    level = 2 ** (h.max_depth - 1)
    zeros = np.zeros((t, n))
    return {"cursor": np.zeros(4), "hyper": h.vector(),
            "cuts": np.full((f, b - 1), NO_CUT), "status": zeros.copy(),
            "feature": np.full((t, n), -1.0), "threshold": zeros.copy(),
            "cut_index": zeros.copy(), "default_left": zeros.copy(), "value": zeros.copy(),
            "gain": zeros.copy(), "cover": zeros.copy(),
            "sketch": np.zeros((f, FINE + 1)), "labels": np.zeros(2),
            "hist": np.zeros((level, f, b + 1, 2))}


def state_shapes(h: Hyper) -> dict[str, tuple[int, ...]]:
    """The shape of every array of :func:`initial_state`, without allocating any (a saved
    model's header is checked against these before a learner is built from it)."""
    t, n, f, b = h.n_trees, h.nodes, h.n_features, h.max_bin
    per_node = dict.fromkeys(("status", "feature", "threshold", "cut_index", "default_left",
                              "value", "gain", "cover"), (t, n))
    return {"cursor": (4,), "hyper": (8,), "cuts": (f, b - 1), **per_node,
            "sketch": (f, FINE + 1), "labels": (2,),
            "hist": (2 ** (h.max_depth - 1), f, b + 1, 2)}


def _hyper(state: Mapping[str, np.ndarray]) -> tuple[float, float, float, float, int, str]:
    lr, lam, gamma, mcw, depth, obj = state["hyper"][:6]
    return float(lr), float(lam), float(gamma), float(mcw), int(depth), OBJECTIVES[int(obj)]


# -- site side --------------------------------------------------------------------------
def bin_matrix(x: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Bin of every value: ``searchsorted(cuts, x, 'right')`` (so ``x < cuts[k]`` iff the bin
    is ``<= k``, XGBoost's test); a missing value (NaN) gets the extra bin ``max_bin``."""
    n, f = x.shape
    out = np.empty((n, f), dtype=np.int64)
    for j in range(f):
        col = x[:, j]
        out[:, j] = np.searchsorted(cuts[j], col, side="right")
        out[np.isnan(col), j] = cuts.shape[1] + 1
    return out


def site_sums(state: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray
              ) -> dict[str, np.ndarray]:
    """This site's contribution to the round's step: fine counts and label sums (sketch
    round), or the gradient/hessian histograms of the open nodes of the level being grown."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    out = {k: np.zeros_like(state[k]) for k in SUMS}
    phase, tree, depth = (int(v) for v in state["cursor"][:3])
    if phase == SKETCH:
        pos = np.clip(np.floor((x + GRID) / (2 * GRID) * FINE), 0, FINE - 1)
        for j in range(x.shape[1]):
            seen = ~np.isnan(x[:, j])
            out["sketch"][j, :FINE] = np.bincount(pos[seen, j].astype(np.int64), minlength=FINE)
            out["sketch"][j, FINE] = (~seen).sum()
        out["labels"][:] = [y.sum(), len(y)]
        return out
    if phase != GROW:
        return out
    margin = predict_margin(state, x)
    g, h = grad_hess(margin, y, _hyper(state)[5])
    node = route(state, tree, x, depth)
    first = 2 ** depth - 1
    status = state["status"][tree]
    rows = (node >= 0) & (status[np.maximum(node, 0)] == OPEN)
    bins = bin_matrix(x[rows], state["cuts"])
    local = node[rows] - first
    level, f, nb, _ = out["hist"].shape
    key = (local[:, None] * f + np.arange(f)[None, :]) * nb + bins
    size = level * f * nb
    for c, w in enumerate((g[rows], h[rows])):
        out["hist"][..., c] = np.bincount(key.reshape(-1), weights=np.repeat(w, f),
                                          minlength=size).reshape(level, f, nb)
    return out


def grad_hess(margin: np.ndarray, y: np.ndarray, objective: str
              ) -> tuple[np.ndarray, np.ndarray]:
    if objective == "binary:logistic":
        p = 1.0 / (1.0 + np.exp(-margin))
        return p - y, np.maximum(p * (1.0 - p), 1e-16)
    return margin - y, np.ones_like(margin)


def route(state: Mapping[str, np.ndarray], tree: int, x: np.ndarray, depth: int) -> np.ndarray:
    """The node of tree ``tree`` each row reaches after at most ``depth`` levels of splits
    (stopping at a leaf or an undecided node)."""
    node = np.zeros(len(x), dtype=np.int64)
    status, feat = state["status"][tree], state["feature"][tree].astype(np.int64)
    thr, left_default = state["threshold"][tree], state["default_left"][tree]
    rows = np.arange(len(x))
    for _ in range(depth):
        split = status[node] == SPLIT
        if not split.any():
            break
        n = node[split]
        v = x[rows[split], feat[n]]
        left = np.where(np.isnan(v), left_default[n] > 0, v < thr[n])
        node[split] = np.where(left, 2 * n + 1, 2 * n + 2)
    return node


def complete_trees(state: Mapping[str, np.ndarray]) -> int:
    phase, tree = int(state["cursor"][0]), int(state["cursor"][1])
    return state["status"].shape[0] if phase == DONE else (tree if phase == GROW else 0)


def predict_margin(state: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Base score plus every complete tree's leaf value (the tree being grown not yet)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    margin = np.full(len(x), float(state["cursor"][3]))
    depth = _hyper(state)[4]
    for t in range(complete_trees(state)):
        margin += state["value"][t][route(state, t, x, depth)]
    return margin


# -- hub side ---------------------------------------------------------------------------
def cut_points(sketch: np.ndarray, max_bin: int) -> np.ndarray:
    """Up to ``max_bin - 1`` split candidates per feature: the federation's quantiles read
    from the pooled fine counts (distinct, ascending, padded with :data:`NO_CUT`)."""
    f = sketch.shape[0]
    cuts = np.full((f, max_bin - 1), NO_CUT)
    edges = -GRID + (np.arange(FINE) + 1) * (2 * GRID / FINE)  # right edge of each fine bin
    for j in range(f):
        counts = sketch[j, :FINE]
        total = counts.sum()
        if total <= 0:
            continue
        cum = np.cumsum(counts)
        targets = total * np.arange(1, max_bin) / max_bin
        idx = np.searchsorted(cum, targets - 1e-9, side="left")
        chosen = np.unique(edges[np.clip(idx, 0, FINE - 2)])
        chosen = chosen[chosen < edges[np.flatnonzero(cum >= total - 1e-9)[0]]]
        cuts[j, :len(chosen)] = chosen[: max_bin - 1]
    return cuts


def advance(state: Mapping[str, np.ndarray], sums: Mapping[str, np.ndarray]
            ) -> dict[str, np.ndarray]:
    """The next state from the round's summed site contributions (:data:`SUMS`)."""
    new = {k: np.array(v, dtype=np.float64, copy=True) for k, v in state.items()}
    for k in SUMS:
        new[k][...] = 0.0
    phase = new["cursor"][0]
    if phase == SKETCH:
        _sketch_step(new, sums)
    elif phase == GROW:
        _grow_level(new, np.asarray(sums["hist"], dtype=np.float64))
    return new


def _sketch_step(new: dict[str, np.ndarray], sums: Mapping[str, np.ndarray]) -> None:
    max_bin = new["cuts"].shape[1] + 1
    new["cuts"] = cut_points(np.asarray(sums["sketch"]), max_bin)
    label_sum, count = (float(v) for v in sums["labels"])
    objective = _hyper(new)[5]
    mean = label_sum / count if count > 0 else 0.5
    if new["hyper"][6]:  # the study's own base_score (a probability for binary:logistic)
        mean = float(new["hyper"][7])
    if objective == "binary:logistic":
        p = min(max(mean, 1e-6), 1 - 1e-6)
        base = float(np.log(p / (1 - p)))
    else:
        base = mean
    new["cursor"][:] = [GROW, 0, 0, base]
    new["status"][0, 0] = OPEN


def _grow_level(new: dict[str, np.ndarray], hist: np.ndarray) -> None:
    lr, lam, gamma, mcw, max_depth, _ = _hyper(new)
    tree, depth = int(new["cursor"][1]), int(new["cursor"][2])
    first = 2 ** depth - 1
    status = new["status"][tree]
    cuts = new["cuts"]
    opened = False
    for j in range(2 ** depth):
        node = first + j
        if status[node] != OPEN:
            continue
        h_node = hist[j]
        gsum, hsum = float(h_node[0, :, 0].sum()), float(h_node[0, :, 1].sum())
        new["cover"][tree, node] = hsum
        new["value"][tree, node] = -lr * gsum / (hsum + lam)
        best = _best_split(h_node, cuts, gsum, hsum, lam, mcw) if depth < max_depth else None
        if best is None or best[0] <= gamma or best[0] <= 1e-9:
            status[node] = LEAF
            continue
        gain, f, k, miss_left, (gl, hl) = best
        status[node] = SPLIT
        new["feature"][tree, node], new["cut_index"][tree, node] = f, k
        new["threshold"][tree, node] = cuts[f, k]
        new["default_left"][tree, node] = float(miss_left)
        new["gain"][tree, node] = gain
        for child, (gc, hc) in ((2 * node + 1, (gl, hl)), (2 * node + 2, (gsum - gl, hsum - hl))):
            new["cover"][tree, child] = hc
            new["value"][tree, child] = -lr * gc / (hc + lam)
            status[child] = LEAF if depth + 1 >= max_depth else OPEN
            opened |= depth + 1 < max_depth
    if opened:
        new["cursor"][2] = depth + 1
        return
    nxt = tree + 1
    if nxt >= new["status"].shape[0]:
        new["cursor"][:3] = [DONE, nxt, 0]
    else:
        new["cursor"][:3] = [GROW, nxt, 0]
        new["status"][nxt, 0] = OPEN


#: Splits whose gains differ by less than this (relative) are ties, broken by the lowest
#: (feature, boundary, missing-goes-right first): two features that separate a node's rows
#: identically then give the same split whether the hub summed exact histograms or secure
#: aggregation's fixed-point ones (2^-frac_bits per entry).
TIE = 1e-6


def _best_split(h_node: np.ndarray, cuts: np.ndarray, gsum: float, hsum: float, lam: float,
                mcw: float) -> tuple[float, int, int, bool, tuple[float, float]] | None:
    """The best (loss change, feature, boundary, missing-goes-left, left sums) of one node,
    trying both directions for the missing values (XGBoost's sparsity-aware split)."""
    nb = h_node.shape[1]
    known = h_node[:, : nb - 1, :]
    miss = h_node[:, nb - 1, :]
    cum = np.cumsum(known, axis=1)[:, :-1, :]  # left sums for boundaries k = 0..B-2
    valid = cuts < NO_CUT
    parent = gsum * gsum / (hsum + lam)
    losses, lefts = [], []
    for miss_left in (False, True):
        gl = cum[..., 0] + (miss[:, None, 0] if miss_left else 0.0)
        hl = cum[..., 1] + (miss[:, None, 1] if miss_left else 0.0)
        gr, hr = gsum - gl, hsum - hl
        with np.errstate(divide="ignore", invalid="ignore"):
            loss = gl * gl / (hl + lam) + gr * gr / (hr + lam) - parent
        losses.append(np.where(valid & (hl >= mcw) & (hr >= mcw) & (hl > 0) & (hr > 0), loss,
                               -np.inf))
        lefts.append((gl, hl))
    both = np.stack(losses, axis=-1)  # (feature, boundary, direction)
    top = float(both.max())
    if not np.isfinite(top):
        return None
    f, k, d = np.unravel_index(int(np.argmax(both >= top - TIE * max(1.0, abs(top)))),
                               both.shape)
    gl, hl = lefts[d]
    return float(both[f, k, d]), int(f), int(k), bool(d), (float(gl[f, k]), float(hl[f, k]))


def feature_importance(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per feature: total gain, times used to split, and total cover of its splits
    (XGBoost's ``total_gain``, ``weight`` and ``total_cover``)."""
    f = state["cuts"].shape[0]
    split = state["status"] == SPLIT
    feat = state["feature"][split].astype(np.int64)
    return {"total_gain": np.bincount(feat, weights=state["gain"][split], minlength=f),
            "weight": np.bincount(feat, minlength=f).astype(np.float64),
            "total_cover": np.bincount(feat, weights=state["cover"][split], minlength=f)}


def to_xgboost_json(state: Mapping[str, np.ndarray], *, mean: np.ndarray | None = None,
                    std: np.ndarray | None = None,
                    feature_names: tuple[str, ...] | list[str] = ()) -> dict:
    """The ensemble as an XGBoost JSON model (``xgboost.Booster(model_file=...)`` loads it).

    ``mean``/``std``: the standardization the sites applied before binning; thresholds are
    mapped back (``t * std + mean``, monotone), so the Booster takes the raw features.
    """
    _, _, _, _, _, objective = _hyper(state)
    f = state["cuts"].shape[0]
    mean = np.zeros(f) if mean is None else np.asarray(mean, np.float64).reshape(-1)
    std = np.ones(f) if std is None else np.asarray(std, np.float64).reshape(-1)
    base = float(state["cursor"][3])
    base_score = 1.0 / (1.0 + np.exp(-base)) if objective == "binary:logistic" else base
    trees = [_tree_json(state, t, i, mean, std, f)
             for i, t in enumerate(range(complete_trees(state)))]
    n = len(trees)
    obj: dict = {"name": objective, "reg_loss_param": {"scale_pos_weight": "1"}}
    return {"learner": {
        "attributes": {}, "feature_names": list(feature_names),
        "feature_types": ["float"] * len(feature_names),
        "gradient_booster": {"model": {
            "gbtree_model_param": {"num_parallel_tree": "1", "num_trees": str(n)},
            "iteration_indptr": list(range(n + 1)), "tree_info": [0] * n, "trees": trees},
            "name": "gbtree"},
        "learner_model_param": {"base_score": f"[{base_score:.9E}]", "boost_from_average": "1",
                                "num_class": "0", "num_feature": str(f), "num_target": "1"},
        "objective": obj}, "version": [3, 0, 0]}


def _tree_json(state: Mapping[str, np.ndarray], t: int, tree_id: int, mean: np.ndarray,
               std: np.ndarray, f: int) -> dict:
    status = state["status"][t]
    order: list[int] = []  # breadth-first renumbering of the nodes that exist
    queue = [0]
    while queue:
        node = queue.pop(0)
        order.append(node)
        if status[node] == SPLIT:
            queue += [2 * node + 1, 2 * node + 2]
    new_id = {node: i for i, node in enumerate(order)}
    left, right, parents, cond, idx, dleft, loss, hess, weights = ([] for _ in range(9))
    for node in order:
        split = status[node] == SPLIT
        feat = int(state["feature"][t, node]) if split else 0
        left.append(new_id[2 * node + 1] if split else -1)
        right.append(new_id[2 * node + 2] if split else -1)
        parents.append(2147483647 if node == 0 else new_id[(node - 1) // 2])
        value = float(state["value"][t, node])
        cond.append(float(state["threshold"][t, node] * std[feat] + mean[feat]) if split
                    else value)
        idx.append(feat)
        dleft.append(int(state["default_left"][t, node] > 0) if split else 0)
        loss.append(float(state["gain"][t, node]) if split else 0.0)
        hess.append(float(state["cover"][t, node]))
        weights.append(value)
    k = len(order)
    return {"base_weights": weights, "categories": [], "categories_nodes": [],
            "categories_segments": [], "categories_sizes": [], "default_left": dleft,
            "id": tree_id, "left_children": left, "loss_changes": loss, "parents": parents,
            "right_children": right, "split_conditions": cond, "split_indices": idx,
            "split_type": [0] * k, "sum_hessian": hess,
            "tree_param": {"num_deleted": "0", "num_feature": str(f), "num_nodes": str(k),
                           "size_leaf_vector": "1"}}
