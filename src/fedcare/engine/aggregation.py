"""Hub side: how a round's fit replies become the rows the strategy aggregates, as steps.

After a round's fit exchange, the engine (:meth:`RoundEngine.run_round
<fedcare.engine.round_engine.RoundEngine.run_round>`) hands the replies to ONE aggregation
step, built once per study by :func:`hub_aggregation` from the study's secure aggregation and
DP, and then lets the strategy aggregate what the step put into the update stack::

    kind = aggregation.combine(round, stack)          # fills the stack
    new = strategy.aggregate(round, model, stack, kind, aux)

The steps (each a :class:`Aggregation`):

* :class:`PlainSum` - every completed site's update is a row (weighted by its examples; under
  DP-FedAvg every site weighs 1 and the rows are clipped differences), outliers flagged.
* :class:`SecureSum` - the round's secure-aggregation protocol (secagg, secagg+, ckks) runs
  its remaining steps through the engine's protocol exchange; the stack then holds ONE row,
  the example-weighted mean of the included sites (the hub never sees one site's update).
* :class:`CentralNoise` ``(inner)`` - central DP-FedAvg: the discrete Gaussian noise is added
  once to the exact sum of what ``inner`` combined (the clipped differences, or the secure
  sum), before dividing, so the release is a function of the noisy sum alone.

This mirrors the site's chain (:mod:`fedcare.engine.filters`): what the sites' filters did
(clip, noise shares, masks) the hub's step undoes or completes (unmask, central noise).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from fedcare.core.errors import FedcareError
from fedcare.core.messages import Update, UpdateKind
from fedcare.core.params import Parameters
from fedcare.engine.integrity import MIN_UPDATES_FOR_OUTLIERS, robust_outliers
from fedcare.strategies.aggregate import UpdateStack

if TYPE_CHECKING:
    from fedcare.engine.history import RoundRecord
    from fedcare.engine.privacy import HubPrivacy
    from fedcare.engine.secure import ExchangeFn, SecureAggregator


class RoundFailed(FedcareError):
    """Too few sites completed a round for it to count; the global model is unchanged."""


@dataclass
class RoundInputs:
    """What an aggregation step sees of one round: its number, the sites sampled, the fit
    replies that passed the wire checks (and those that failed), the model the sites
    trained from, and the round's record (which a step completes: who is in the sum, bytes,
    flags)."""

    round: int
    sampled: Sequence[str]
    updates: Mapping[str, Update]
    failures: Mapping[str, str]
    global_model: Parameters
    record: RoundRecord


@dataclass
class Combined:
    """What a step put into the stack: the update kind the strategy aggregates and, for a
    wrapper such as :class:`CentralNoise`, the exact float64 sum of what entered
    (``total``; None: not available) and how to put a noised sum in its place."""

    kind: UpdateKind
    total: np.ndarray | None
    replace_sum: Callable[[np.ndarray], None]


class Aggregation(Protocol):
    """One hub aggregation step: fill ``stack`` from the round's replies."""

    def combine(self, inputs: RoundInputs, stack: UpdateStack) -> Combined: ...


def _no_sum(_noisy: np.ndarray) -> None:
    raise FedcareError("this aggregation step holds no sum to add noise to")


def flag_outliers(stack: UpdateStack, record: RoundRecord, global_model: Parameters, *,
                  delta: bool) -> None:
    """Flag (never drop) the stacked updates that lie far from the round's others: the
    distance of each to the global model (``delta``: the rows are differences already)
    against the round's median, as a robust z-score (:func:`robust_outliers`)."""
    rows, sites = stack.rows, stack.sites
    if len(sites) < MIN_UPDATES_FOR_OUTLIERS:
        return
    g = None if delta else global_model.flatten(stack.dtype)
    buf = np.empty(rows.shape[1], dtype=rows.dtype)  # one buffer, not one per site
    distances = {}
    for i, site in enumerate(sites):
        diff = rows[i] if g is None else np.subtract(rows[i], g, out=buf)
        distances[site] = float(np.sqrt(np.dot(diff, diff)))
    for site, z in robust_outliers(distances).items():
        why = (f"update lies {distances[site]:.4g} from the global model, "
               f"{z:.1f} robust z-scores above the round's median distance (flagged, "
               "still aggregated)")
        old = record.sites_flagged.get(site)
        record.sites_flagged[site] = why if old is None else f"{old}; {why}"


@dataclass(frozen=True)
class PlainSum:
    """Each completed site's update is one row: weighted by its examples, or - DP-FedAvg
    (``uniform``) - a clipped difference weighing 1 (weighting by rows would break the
    sensitivity bound); a DP-FedAvg site that sent a full model fails the round."""

    uniform: bool = False

    def combine(self, inputs: RoundInputs, stack: UpdateStack) -> Combined:
        for site in inputs.sampled:
            if site in inputs.updates:
                u = inputs.updates[site]
                if self.uniform and u.kind is not UpdateKind.DELTA:
                    raise RoundFailed(f"round {inputs.round}: {site} sent a full model in a "
                                      "DP-FedAvg study (clipped differences expected)")
                stack.add(site, u.parameters, 1.0 if self.uniform else u.num_examples,
                          validated=True)
        flag_outliers(stack, inputs.record, inputs.global_model, delta=self.uniform)
        if not self.uniform:
            return Combined(UpdateKind.FULL, None, _no_sum)
        rows = stack.rows

        def replace_sum(noisy: np.ndarray) -> None:
            # Every row becomes the noisy mean: the uniform average is then a function of
            # the exact noisy sum alone (no float rounding mixes in a site's bits).
            rows[:] = (noisy / len(rows)).astype(rows.dtype)

        return Combined(UpdateKind.DELTA, rows.sum(axis=0, dtype=np.float64), replace_sum)


@dataclass(frozen=True)
class SecureSum:
    """The round's secure aggregation: the protocol's remaining steps run through
    ``exchange`` (the engine's protocol exchange), the sum's total weight is checked against
    the included sites' declared rows (``example_bounds``; every site weighs 1 under
    DP-FedAvg, ``uniform``), the record says who is in the sum, and the stack holds one row:
    the mean of the included sites, which every supported strategy aggregates exactly as it
    would the individual rows."""

    aggregator: SecureAggregator
    exchange: ExchangeFn
    study: str
    min_completed: int
    example_bounds: Mapping[str, int] | None = None
    uniform: bool = False

    def combine(self, inputs: RoundInputs, stack: UpdateStack) -> Combined:
        r, record = inputs.round, inputs.record
        try:
            result = self.aggregator.aggregate(self.exchange, r, inputs.sampled,
                                               inputs.updates, study=self.study,
                                               global_model=inputs.global_model)
        except FedcareError as exc:
            raise RoundFailed(f"round {r}: secure aggregation aborted: {exc.message}; "
                              f"failures: {dict(inputs.failures)}") from exc
        self._check_weight(r, result.included, result.total_weight, record)
        record.sites_failed = {**inputs.failures, **result.failures}
        record.sites_completed = list(result.included)
        record.bytes_down += result.bytes_down
        record.bytes_up += result.bytes_up
        if len(result.included) < self.min_completed:
            raise RoundFailed(f"round {r}: only {len(result.included)} sites are in the "
                              f"secure sum (need {self.min_completed}); failures: "
                              f"{record.sites_failed}")
        spec, weight = inputs.global_model.spec, result.total_weight

        def put(new_model: np.ndarray) -> None:
            stack.clear()
            mean = Parameters.unflatten(new_model.astype(stack.dtype), spec)
            stack.add("secure-sum", mean, weight, validated=False)

        def replace_sum(noisy: np.ndarray) -> None:
            put(inputs.global_model.flatten("float64") + noisy / weight)

        put(result.new_model)
        # Fail closed: a step that needs the exact sum gets NaN when the protocol gave none.
        total = result.total if result.total is not None else np.full(spec.total_size, np.nan)
        return Combined(UpdateKind.FULL, total, replace_sum)

    def _check_weight(self, round_: int, included: Sequence[str], total_weight: float,
                      record: RoundRecord) -> None:
        """Under secure aggregation the hub sees only the round's total weight, not who
        claimed what: it must not exceed the sum of the included sites' bounds (under
        DP-FedAvg every site weighs 1). If it does, some site lied about its examples and
        the round's aggregate cannot be trusted: the round is refused (RoundFailed, which
        ends the study with the reason) rather than folded into the model - there is no
        per-site weight to cap, and leaving out "the" site would need knowing which one."""
        if self.example_bounds is None:
            return
        limit = float(len(included)) if self.uniform else float(
            sum(self.example_bounds.get(s, 0) for s in included))
        if total_weight > limit * (1 + 1e-6) + 1e-3:  # fixed-point / CKKS rounding
            why = (f"the secure sum's total weight {total_weight:.6g} exceeds the "
                   f"{limit:.6g} examples its sites {sorted(included)} declared")
            record.sites_flagged["(secure sum)"] = why
            raise RoundFailed(f"round {round_}: aggregate refused: {why}; a site claimed "
                              "more examples than it holds")


@dataclass(frozen=True)
class CentralNoise:
    """Central DP-FedAvg around another step: the sum of the clipped differences that
    ``inner`` combined, plus discrete Gaussian ``N_Z(0, (z·C·2^f)^2)`` grid steps, exact in
    float64 (:meth:`HubPrivacy.noisy_sum <fedcare.engine.privacy.HubPrivacy.noisy_sum>`),
    replaces the exact sum before anything divides it."""

    inner: Aggregation
    privacy: HubPrivacy

    def combine(self, inputs: RoundInputs, stack: UpdateStack) -> Combined:
        got = self.inner.combine(inputs, stack)
        if got.total is None:
            raise FedcareError("central noise needs the exact sum of the clipped differences")
        noisy = self.privacy.noisy_sum(got.total)
        if noisy is None:
            raise FedcareError("central noise on a study without central DP-FedAvg")
        got.replace_sum(noisy)
        return Combined(got.kind, None, _no_sum)


def hub_aggregation(*, secure: SecureAggregator | None, privacy: HubPrivacy | None,
                    exchange: ExchangeFn, study: str, min_completed: int,
                    example_bounds: Mapping[str, int] | None) -> Aggregation:
    """The study's aggregation step: :class:`SecureSum` under secure aggregation, else
    :class:`PlainSum` (uniform under DP-FedAvg), wrapped in :class:`CentralNoise` for central
    DP-FedAvg."""
    from fedcare.privacy.dp.spec import Mechanism

    uniform = privacy is not None and privacy.is_dp_fedavg
    step: Aggregation = (
        SecureSum(secure, exchange, study, min_completed, example_bounds, uniform=uniform)
        if secure is not None else PlainSum(uniform=uniform))
    if privacy is not None and privacy.spec.mechanism is Mechanism.DP_FEDAVG_CENTRAL:
        step = CentralNoise(step, privacy)
    return step
