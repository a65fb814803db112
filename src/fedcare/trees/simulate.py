"""The whole protocol in one process, for tests, benchmarks and as the reference the round
engine's learner and strategy follow: every value that leaves a site below is a sum (or, for
the ranges, an outward-rounded extreme), and the hub only adds them and chooses splits.

Round plan: (1) ranges (or summed moments), (2) fine counts + label sum + row count, then for
each tree one round per level that has open nodes (at most ``max_depth``), each carrying
``2^level x n_features x (max_bin + 1) x 2`` histogram floats per site (half that below the
root with ``subtract``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from fedcare.trees.ensemble import Ensemble, base_margin, initial_base_score
from fedcare.trees.histogram import (
    bin_matrix,
    grad_hess,
    level_histograms,
    route_rows,
    tree_margin,
)
from fedcare.trees.options import TreeOptions, check_bins_vs_rows
from fedcare.trees.sketch import (
    cut_points,
    local_fine_counts,
    local_moments,
    local_ranges,
    merge_ranges,
    moment_grid,
)
from fedcare.trees.split import grow_level, with_siblings

#: What the hub applies to each site's array before adding (e.g. secure aggregation's
#: fixed-point quantization); the identity by default.
Encode = Callable[[np.ndarray], np.ndarray]


@dataclass
class Trace:
    """What a run cost: floats each site sent by protocol step, and compute seconds."""

    sketch: int = 0
    histograms: list[int] = field(default_factory=list)  # one entry per level round
    site_seconds: float = 0.0  # summed over sites (they would run in parallel)
    hub_seconds: float = 0.0

    @property
    def rounds(self) -> int:
        return 2 + len(self.histograms)


class _Site:
    """One site's rows and its cached margins (the sum of its complete trees' leaves)."""

    def __init__(self, X: np.ndarray, y: np.ndarray) -> None:
        self.X = np.asarray(X, np.float64)
        self.y = np.asarray(y, np.float64)
        self.binned = np.zeros((0, 0), np.uint16)
        self.margin = np.zeros(0)
        self.trees_in_margin = 0

    def start(self, ens: Ensemble) -> None:
        self.binned = bin_matrix(self.X, ens.cuts)
        self.margin = np.full(len(self.y), base_margin(ens.base_score, ens.objective))
        self.trees_in_margin = 0

    def histograms(self, ens: Ensemble, tree: int, level: int, left_only: bool) -> np.ndarray:
        while self.trees_in_margin < tree:
            self.margin = self.margin + tree_margin(self.binned, ens, self.trees_in_margin)
            self.trees_in_margin += 1
        g, h = grad_hess(self.y, self.margin, ens.objective)
        nodes = route_rows(self.binned, ens, tree, level)
        return level_histograms(self.binned, g, h, nodes, level, ens.max_bin,
                                left_only=left_only)


def fit_federated(sites: Sequence[tuple[np.ndarray, np.ndarray]], options: TreeOptions,
                  encode: Encode | None = None,
                  trace: Trace | None = None, subtract: bool = False,
                  grid: Literal["ranges", "moments"] = "ranges") -> Ensemble:
    """Grow the ensemble over ``sites`` (each ``(X, y)``, NaN = missing) exactly as the
    federation does, sending only sums through ``encode``. With ``subtract``, sites send
    only the left children's histograms below the root and the hub derives the right ones
    from the previous level's sums (half the histogram bytes). ``grid="moments"`` places the
    sketch's fine grid from summed moments instead of the sites' ranges, so that every
    message is a sum (secure aggregation throughout)."""
    enc: Encode = encode if encode is not None else (lambda a: a)
    trace = trace if trace is not None else Trace()
    for i, (X, _) in enumerate(sites):
        check_bins_vs_rows(options, len(X), site=str(i))
    local = [_Site(X, y) for X, y in sites]
    if grid == "moments":
        lo, hi = moment_grid(np.sum([enc(local_moments(s.X)) for s in local], axis=0))
    else:
        ranges = [local_ranges(s.X) for s in local]
        lo, hi = merge_ranges(np.stack([r[0] for r in ranges]),
                              np.stack([r[1] for r in ranges]))
    counts = sum(enc(local_fine_counts(s.X, lo, hi, options.sketch_bins)) for s in local)
    label_sum = sum(float(enc(np.array([s.y.sum()]))[0]) for s in local)
    rows = sum(float(enc(np.array([float(len(s.y))]))[0]) for s in local)
    trace.sketch = (3 if grid == "moments" else 2) * lo.size + lo.size * options.sketch_bins + 2
    cuts = cut_points(np.asarray(counts), lo, hi, options.max_bin)
    base = options.base_score if options.base_score is not None else \
        initial_base_score(label_sum, rows, options.objective)
    ens = Ensemble.empty(options, cuts, base)
    for s in local:
        s.start(ens)
    previous = np.zeros(0)
    while (step := ens.next_step()) is not None:
        tree, level = step
        left_only = subtract and level > 0
        started = time.perf_counter()
        hists = [enc(s.histograms(ens, tree, level, left_only)) for s in local]
        sent = time.perf_counter()
        summed = np.sum(hists, axis=0)
        if left_only:
            summed = with_siblings(summed, previous)
        previous = summed
        ens = grow_level(ens, tree, level, summed, options)
        trace.site_seconds += sent - started
        trace.hub_seconds += time.perf_counter() - sent
        trace.histograms.append(int(hists[0].size))
    return ens
