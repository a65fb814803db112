"""Federated gradient-boosted trees (XGBoost's ``hist`` algorithm over horizontally split
rows), as pure numpy: the sites send only sums (a quantile count sketch once, then gradient /
hessian histograms per tree level), the hub chooses the splits, and the model is a set of
fixed-shape arrays that exports to an ordinary XGBoost JSON model file.

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
