"""Federated gradient-boosted trees (XGBoost's ``hist`` algorithm over horizontally split
rows), as pure numpy: the sites send only sums (a quantile count sketch once, then gradient /
hessian histograms per tree level), the hub chooses the splits, and the model is a set of
fixed-shape arrays that exports to an ordinary XGBoost JSON model file.

The protocol (:func:`fedcare.trees.simulate.fit_federated` runs it in one process):

1. grid - site: :func:`local_ranges` (hub: :func:`merge_ranges`), or, when every message must
   be a sum, :func:`local_moments` (hub: :func:`moment_grid` of their sum);
2. sketch - site: :func:`local_fine_counts` on that grid, with its label sum and row count;
   hub: :func:`cut_points` of the summed counts, :func:`initial_base_score`, then
   ``Ensemble.empty(options, cuts, base_score)``;
3. one round per (tree, level) = ``Ensemble.next_step()`` until it is None - site:
   :func:`bin_matrix` once, margins (:func:`tree_margin` per complete tree, cached),
   :func:`grad_hess`, :func:`route_rows`, :func:`level_histograms` (``left_only`` below the
   root halves the bytes); hub: the sum (:func:`with_siblings` with the previous level's sum
   when left-only), then :func:`grow_level`;
4. ``Ensemble.to_xgboost_json()`` is the model file; ``Ensemble.to_arrays()`` /
   ``from_arrays`` the fixed-shape parameters.

A leaf package: it imports only :mod:`fedcare.core`; the learner and strategy that run it in
the round engine live with the other learners and strategies.
"""

from fedcare.trees.ensemble import Ensemble, base_margin, initial_base_score
from fedcare.trees.histogram import (
    bin_matrix,
    grad_hess,
    level_histograms,
    route_rows,
    tree_margin,
)
from fedcare.trees.options import TreeOptions, check_bins_vs_rows, tree_options
from fedcare.trees.sketch import (
    cut_points,
    local_fine_counts,
    local_moments,
    local_ranges,
    merge_ranges,
    moment_grid,
)
from fedcare.trees.split import grow_level, with_siblings

__all__ = [
    "Ensemble", "TreeOptions", "base_margin", "bin_matrix", "check_bins_vs_rows",
    "cut_points", "grad_hess", "grow_level", "initial_base_score", "level_histograms",
    "local_fine_counts", "local_moments", "local_ranges", "merge_ranges", "moment_grid",
    "route_rows", "tree_margin", "tree_options", "with_siblings",
]
