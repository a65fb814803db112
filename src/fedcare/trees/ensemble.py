"""The boosted ensemble as fixed-shape arrays, its predictions and its XGBoost model file.

A federation moves the model as a list of named float arrays of a fixed layout, so a model
that grows tree by tree is stored in preallocated arrays: ``n_trees x (2^(max_depth+1) - 1)``
nodes in heap order (the children of node ``i`` are ``2i+1`` and ``2i+2``). Each node has a
:data:`status`: unused, *open* (its gradient sums are known and its split is being searched),
split, or leaf. The ensemble carries its own split candidates (``cuts``) so that every site
bins its rows the same way, and it exports to XGBoost's JSON model format, which
``xgboost.Booster`` loads and predicts with exactly as :meth:`Ensemble.predict_proba` does.

XGBoost's conventions followed here: a row goes left when ``value < split_condition``
(float32), a missing value (NaN) follows the node's learned default direction, leaf values
are already multiplied by the learning rate, and ``base_score`` is stored in the objective's
output space (a probability for ``binary:logistic``) and turned into a margin by its link.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from fedcare.core.errors import ValidationError
from fedcare.trees.options import Objective, TreeOptions
from fedcare.trees.sketch import PAD

#: Node states.
UNUSED, OPEN, SPLIT, LEAF = 0, 1, 2, 3
#: Per-node arrays, each ``(n_trees, n_nodes)`` float64 (integers are exact in float64).
NODE_ARRAYS = ("status", "feature", "split_bin", "default_left", "weight", "gain",
               "sum_grad", "sum_hess")
#: XGBoost's "no parent" marker for the root.
_NO_PARENT = 2147483647
Importance = Literal["gain", "total_gain", "weight", "cover", "total_cover"]


def n_nodes(max_depth: int) -> int:
    """Nodes of a full binary tree of depth ``max_depth``."""
    return 2 ** (max_depth + 1) - 1


def base_margin(base_score: float, objective: Objective) -> float:
    """The margin of ``base_score`` (the logit of a probability for binary:logistic)."""
    if objective == "binary:logistic":
        p = float(np.float32(base_score))
        return float(np.log(p / (1.0 - p)))
    return float(np.float32(base_score))


def initial_base_score(label_sum: float, rows: float, objective: Objective) -> float:
    """XGBoost's default ``base_score`` from federation-wide sums: the label mean (clipped
    into (0, 1) for binary:logistic), a float32."""
    if rows <= 0:
        raise ValidationError("no rows in the federation to estimate base_score from")
    mean = label_sum / rows
    if objective == "binary:logistic":
        mean = min(max(mean, 1e-6), 1 - 1e-6)
    return float(np.float32(mean))


@dataclass(frozen=True, eq=False)
class Ensemble:
    """The model state: split candidates, base score and the node arrays of every tree."""

    objective: Objective
    cuts: np.ndarray  # (n_features, max_bin - 1) float32 values, padded with PAD
    base_score: float
    status: np.ndarray
    feature: np.ndarray
    split_bin: np.ndarray
    default_left: np.ndarray
    weight: np.ndarray  # leaf: value (x learning rate); split node: its unscaled weight
    gain: np.ndarray  # loss change of a split (0 at a leaf)
    sum_grad: np.ndarray
    sum_hess: np.ndarray

    @classmethod
    def empty(cls, options: TreeOptions, cuts: np.ndarray, base_score: float) -> Ensemble:
        """An ensemble of ``options.n_trees`` unused trees over the given cuts."""
        cuts = np.asarray(cuts, np.float64)
        if cuts.ndim != 2 or cuts.shape[1] != options.max_bin - 1:
            raise ValidationError(f"cuts must be (n_features, max_bin - 1 = "
                                  f"{options.max_bin - 1}), got {cuts.shape}")
        shape = (options.n_trees, n_nodes(options.max_depth))
        zeros = {name: np.zeros(shape) for name in NODE_ARRAYS}
        zeros["feature"] = np.full(shape, -1.0)
        return cls(objective=options.objective, cuts=cuts, base_score=float(base_score),
                   **zeros)

    # -- the wire layout ------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """The state as named float64 arrays (the federation's parameters)."""
        out = {"cuts": self.cuts, "base_score": np.array([self.base_score])}
        out.update({name: getattr(self, name) for name in NODE_ARRAYS})
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], options: TreeOptions) -> Ensemble:
        """The state from :meth:`to_arrays`' layout, checked against ``options``."""
        missing = {"cuts", "base_score", *NODE_ARRAYS} - set(arrays)
        if missing:
            raise ValidationError(f"tree ensemble arrays lack {sorted(missing)}")
        shape = (options.n_trees, n_nodes(options.max_depth))
        nodes = {name: np.asarray(arrays[name], np.float64) for name in NODE_ARRAYS}
        for name, a in nodes.items():
            if a.shape != shape:
                raise ValidationError(f"tree array {name!r} must be {shape}, got {a.shape}")
        status = nodes["status"]
        if not np.isin(status, (UNUSED, OPEN, SPLIT, LEAF)).all():
            raise ValidationError("tree array 'status' holds an unknown node state")
        cuts = np.asarray(arrays["cuts"], np.float64)
        if cuts.ndim != 2 or cuts.shape[1] != options.max_bin - 1:
            raise ValidationError(f"cuts must be (n_features, {options.max_bin - 1}), "
                                  f"got {cuts.shape}")
        split = status == SPLIT
        f = nodes["feature"][split]
        b = nodes["split_bin"][split]
        if ((f < 0) | (f >= cuts.shape[0]) | (f != np.round(f))).any() \
                or ((b < 0) | (b >= options.max_bin) | (b != np.round(b))).any():
            raise ValidationError("a split node names a feature or bin out of range")
        if (np.diff(cuts, axis=1) < 0).any():
            raise ValidationError("cuts must be sorted within each feature")
        base_arr = np.asarray(arrays["base_score"], np.float64).reshape(-1)
        if base_arr.size != 1 or (options.objective == "binary:logistic"
                                  and not 0 < base_arr[0] < 1):
            raise ValidationError("base_score must be one number (a probability in (0, 1) "
                                  "for binary:logistic)")
        base = float(base_arr[0])
        return cls(objective=options.objective, cuts=cuts, base_score=base, **nodes)

    def replace_tree(self, tree: int, **rows: np.ndarray) -> Ensemble:
        """A copy with tree ``tree``'s node arrays replaced by ``rows`` (others shared
        read-only copies)."""
        changed = {}
        for name, row in rows.items():
            a = getattr(self, name).copy()
            a[tree] = row
            changed[name] = a
        return replace(self, **changed)

    # -- progress -------------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return int(self.cuts.shape[0])

    @property
    def max_bin(self) -> int:
        return int(self.cuts.shape[1] + 1)

    @property
    def max_depth(self) -> int:
        return int(np.log2(self.status.shape[1] + 1)) - 1

    def complete_trees(self) -> int:
        """Trees fully grown (a prefix of the ensemble)."""
        done = (self.status[:, 0] >= SPLIT) & ~(self.status == OPEN).any(axis=1)
        return int(np.argmin(done)) if not done.all() else int(done.size)

    def next_step(self) -> tuple[int, int] | None:
        """``(tree, level)`` whose histograms the federation computes next, or None when
        every tree is grown."""
        tree = self.complete_trees()
        if tree == self.status.shape[0]:
            return None
        open_nodes = np.flatnonzero(self.status[tree] == OPEN)
        if open_nodes.size == 0:
            return tree, 0
        return tree, int(np.floor(np.log2(open_nodes.min() + 1)))

    # -- prediction -----------------------------------------------------------------------
    def thresholds(self) -> np.ndarray:
        """Split conditions (float32 values) of every node; ``PAD`` at a split after the
        last cut (all present values go left); 0 where there is no split."""
        ext = np.concatenate([self.cuts, np.full((self.n_features, 1), PAD)], axis=1)
        f = np.clip(self.feature, 0, None).astype(np.int64)
        b = self.split_bin.astype(np.int64)
        return np.where(self.status == SPLIT, ext[f, b], 0.0)

    def predict_margin(self, X: np.ndarray, trees: int | None = None) -> np.ndarray:
        """Margins of rows ``X`` (NaN = missing) from the first ``trees`` trees (default:
        every complete tree), compared in float32 as XGBoost does."""
        X32 = np.asarray(X, dtype=np.float32).astype(np.float64)
        n = X32.shape[0]
        rows = np.arange(n)
        thr = self.thresholds()
        margin = np.full(n, base_margin(self.base_score, self.objective))
        for t in range(self.complete_trees() if trees is None else trees):
            node = np.zeros(n, dtype=np.int64)
            for _ in range(self.max_depth):
                split = self.status[t, node] == SPLIT
                v = X32[rows, np.clip(self.feature[t, node], 0, None).astype(np.int64)]
                left = np.where(np.isnan(v), self.default_left[t, node] > 0, v < thr[t, node])
                node = np.where(split, 2 * node + 1 + (~left), node)
            margin += self.weight[t, node]
        return margin

    def predict_proba(self, X: np.ndarray, trees: int | None = None) -> np.ndarray:
        """Predictions in the objective's output space (probability of class 1 for
        binary:logistic, the value for reg:squarederror)."""
        margin = self.predict_margin(X, trees)
        if self.objective == "binary:logistic":
            return 1.0 / (1.0 + np.exp(-margin))
        return margin

    def feature_importance(self, kind: Importance = "gain") -> np.ndarray:
        """Per-feature importance over the complete trees, as ``Booster.get_score``:
        ``gain`` (mean loss change of the feature's splits), ``total_gain``, ``weight``
        (number of splits), ``cover`` / ``total_cover`` (hessian sums at its splits)."""
        k = self.complete_trees()
        split = self.status[:k] == SPLIT
        f = self.feature[:k][split].astype(np.int64)
        count = np.bincount(f, minlength=self.n_features).astype(np.float64)
        if kind == "weight":
            return count
        values = self.gain if kind in ("gain", "total_gain") else self.sum_hess
        total = np.bincount(f, weights=values[:k][split], minlength=self.n_features)
        if kind.startswith("total_"):
            return total
        return np.divide(total, count, out=np.zeros_like(total), where=count > 0)

    # -- XGBoost's model file ---------------------------------------------------------------
    def to_xgboost_json(self, feature_names: Sequence[str] | None = None) -> bytes:
        """The complete trees as an XGBoost (>= 2) JSON model: ``xgboost.Booster(model_file=
        path)`` or ``Booster().load_model(bytearray(...))`` loads it. ``feature_names``, if
        given, are stored in the model (XGBoost then checks them against a DMatrix's)."""
        names = list(feature_names) if feature_names is not None else []
        if names and len(names) != self.n_features:
            raise ValidationError(f"{len(names)} feature names for {self.n_features} features")
        k = self.complete_trees()
        trees = [self._tree_json(t) for t in range(k)]
        n_f = str(self.n_features)
        model = {
            "learner": {
                "attributes": {},
                "feature_names": names,
                "feature_types": ["float"] * len(names),
                "gradient_booster": {
                    "model": {
                        "cats": {"enc": [], "feature_segments": [], "sorted_idx": []},
                        "gbtree_model_param": {"num_parallel_tree": "1", "num_trees": str(k)},
                        "iteration_indptr": list(range(k + 1)),
                        "tree_info": [0] * k,
                        "trees": trees,
                    },
                    "name": "gbtree",
                },
                "learner_model_param": {
                    "base_score": f"[{np.float32(self.base_score):.8E}]",
                    "boost_from_average": "1", "num_class": "0", "num_feature": n_f,
                    "num_target": "1"},
                "objective": {"name": self.objective,
                              "reg_loss_param": {"scale_pos_weight": "1"}},
            },
            "version": [3, 0, 0],
        }
        return json.dumps(model).encode()

    def _tree_json(self, t: int) -> dict[str, object]:
        """One tree in XGBoost's layout: nodes numbered breadth-first from 0."""
        order = [0]
        for i in order:
            if self.status[t, i] == SPLIT:
                order += [2 * i + 1, 2 * i + 2]
        ids = {heap: k for k, heap in enumerate(order)}
        thr = self.thresholds()[t]
        left, right, parents, conds, idx, dleft = [], [], [], [], [], []
        for heap in order:
            split = self.status[t, heap] == SPLIT
            left.append(ids[2 * heap + 1] if split else -1)
            right.append(ids[2 * heap + 2] if split else -1)
            parents.append(ids[(heap - 1) // 2] if heap else _NO_PARENT)
            conds.append(float(np.float32(thr[heap] if split else self.weight[t, heap])))
            idx.append(int(self.feature[t, heap]) if split else 0)
            dleft.append(int(self.default_left[t, heap]) if split else 0)
        pick = np.asarray(order)

        def f32(a: np.ndarray) -> list[float]:
            return [float(v) for v in a[t, pick].astype(np.float32)]

        return {
            "base_weights": f32(self.weight), "categories": [], "categories_nodes": [],
            "categories_segments": [], "categories_sizes": [], "default_left": dleft,
            "id": t, "left_children": left, "loss_changes": f32(self.gain),
            "parents": parents, "right_children": right, "split_conditions": conds,
            "split_indices": idx, "split_type": [0] * len(order),
            "sum_hessian": f32(self.sum_hess),
            "tree_param": {"num_deleted": "0", "num_feature": str(self.n_features),
                           "num_nodes": str(len(order)), "size_leaf_vector": "1"},
        }
