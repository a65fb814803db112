"""Federated XGBoost: the hub's half of horizontally federated gradient-boosted trees.

A site of an xgboost study contributes sums only: the strategy's site half (:class:`SumsOnly`,
which a site takes from the study it approved, never from a task) tells its learner so, and
``aggregate`` turns the round's example-weighted mean back into the federation's sums (mean x
total weight: every site sent its sums divided by its rows) and takes one step of the
ensemble's growth (:func:`fedcare.trees.rounds.advance`): the first round pools the quantile
sketch into split candidates and the base score, each later one grows one level of one tree
with XGBoost's gain (Chen & Guestrin, KDD 2016). Only sums are used, so the strategy works
under secure aggregation, where the hub sees nothing else; the fixed-point encoding then
rounds each site's histogram entries to 2^-frac_bits. The model is the ensemble's state, read
from the hub's current model: what the sites send back of it is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from fedcare.core.errors import ValidationError
from fedcare.core.messages import UpdateKind
from fedcare.core.params import Parameters
from fedcare.strategies.aggregate import UpdateStack
from fedcare.strategies.base import Capabilities, SiteAlgorithm, Strategy, StrategyOptions
from fedcare.strategies.registry import register
from fedcare.trees import rounds


class XGBoostStrategyOptions(StrategyOptions):
    name: Literal["xgboost"] = Field("xgboost", description=(
        "Federated XGBoost (model.name = \"xgboost\"): trees grown from summed histograms."))


#: What the site half hands the learner: contribute the site's sums (the key the xgboost
#: learner reads, :data:`fedcare.learners.xgboost.SUMS_ONLY_KEY`; the two leaf packages do
#: not import each other).
SUMS_ONLY = Parameters({"sums_only": np.ones(1)})


class SumsOnly(SiteAlgorithm):
    """The site half: the learner is handed :data:`SUMS_ONLY` as its
    correction, so it returns the site's sums instead of growing the trees alone (which is
    what it does for the baselines, trained without this half)."""

    def correction(self, task_aux: Mapping[str, Parameters],
                   site_state: Mapping[str, np.ndarray]) -> Parameters | None:
        return SUMS_ONLY


@register
class XGBoost(Strategy):
    """XGBoost: trees grown level by level from the sites' summed gradient histograms."""

    name = "xgboost"
    Options: ClassVar[type[StrategyOptions]] = XGBoostStrategyOptions
    # Sums only: fine under secure aggregation. DP-FedAvg's clipped, noised model differences
    # mean nothing for histograms: refused.
    capabilities = Capabilities(aggregates_a_sum=True, site_level_dp=False)
    site_half: ClassVar[SiteAlgorithm] = SumsOnly()

    def aggregate(self, round_: int, current: Parameters, stack: UpdateStack,
                  kind: UpdateKind, aux: Mapping[str, Mapping[str, Parameters]]) -> Parameters:
        if kind is not UpdateKind.FULL:
            raise ValidationError("xgboost aggregates the sites' sums (full updates), not "
                                  "model differences")
        if not all(k in current for k in rounds.SUMS):
            raise ValidationError("xgboost needs an xgboost model (the ensemble's state)")
        mean = Parameters.unflatten(stack.average(), current.spec)
        total = float(stack.weights.sum())
        sums = {k: mean[k].astype("float64") * total for k in rounds.SUMS}
        return Parameters(rounds.advance(dict(current.items()), sums))
