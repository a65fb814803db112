"""Site side: what happens to a trained update before it leaves the site, as a chain of filters.

A site's reply to a fit task is built in three steps (:meth:`SiteExecutor.run
<fedcare.engine.executor.SiteExecutor.run>`): *check* the task against the approved study,
*charge* the site's privacy ledger, *train*; then the trained update passes through the
site's chain of filters, in order, and the last one's output is the reply::

    update = Update(FULL, trained model, provenance=("fit:<learner>", "strategy:<name>"))
    for f in chain:
        update = f(update, ctx)

Each filter is a small callable ``(Update, FilterContext) -> Update`` (:class:`UpdateFilter`)
that returns a new update and appends its own entry to the update's ``provenance``, so the
reply says what was done to it, in order. The chain is built once per study by
:func:`site_chain` from the study the site APPROVED (never from a task) and the site's own
settings, in this fixed order:

1. **Study filters** (none yet; e.g. compression): what the approved study asks of every
   update, on the trained model. They run first, so that everything after them sees the
   update that would be sent.
2. **Site-owned privacy filters**, always last, in this order:

   a. :class:`DpMetrics` (any DP study): only the DP accounting facts (and the step count)
      of the training metrics leave the site; the training loss is computed on the protected
      rows without noise.
   b. :class:`DpClip` (DP-FedAvg): the difference to the global model, clipped to the
      study's L2 bound (the update becomes a ``DELTA``).
   c. :class:`DpNoise` (DP-FedAvg): the clipped difference rounded onto the fixed-point grid
      ``2^-frac_bits`` (its norm still within the clip) and, in distributed mode, this site's
      discrete Gaussian share of the noise. In central mode the hub adds the noise
      (:class:`~fedcare.engine.aggregation.CentralNoise`).
   d. :class:`SecureMask` (secagg, secagg+) or :class:`HeEncrypt` (ckks): the update enters
      the round's secure aggregation; the reply carries only the protocol's first message
      (keys, or a signed ciphertext), never the update.

DP comes before secure aggregation because the secure sum must hold the clipped, noised
values (the noise protects them from the hub, the masks only hide which site sent what); a
filter that changes the update's values (compression) must come before DP, so the clip bounds
what is actually sent. Adding a filter is one class here and one line in :func:`site_chain`
(see ``docs/extending.md``).

The feature-statistics release (a study's ``stats`` task) is not a model update and has its
own DP mechanism (:meth:`fedcare.engine.privacy.SitePrivacy.noised_stats_observed`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from fedcare.core.errors import ProtocolError
from fedcare.core.learning import DpSgdFacts
from fedcare.core.messages import Task, Update, UpdateKind
from fedcare.core.params import Parameters
from fedcare.engine.privacy import DP_SITES, SitePrivacy
from fedcare.engine.secure import (
    ATTEMPT,
    SecureSite,
    contribution,
    delta_contribution,
    task_attempt,
)
from fedcare.privacy.dp.spec import Mechanism, PrivacySpec

log = logging.getLogger("fedcare.node")


@dataclass(frozen=True)
class FilterContext:
    """What a filter may read besides the update: the task it answers (its global model is
    ``task.parameters``, its validated meta says the round's size and participants)."""

    task: Task


class UpdateFilter(Protocol):
    """One step of a site's update chain: a new update, with one more provenance entry."""

    #: A short name for logs and the tests.
    name: str

    def __call__(self, update: Update, ctx: FilterContext) -> Update: ...


def _noted(update: Update, entry: str, **changes: Any) -> Update:
    return replace(update, provenance=(*update.provenance, entry), **changes)


# -- DP --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DpMetrics:
    """Under DP only the accounting facts leave the site: of the training metrics, the
    DP-SGD facts (:class:`~fedcare.core.learning.DpSgdFacts`) and the step count are kept."""

    name = "dp_metrics"

    def __call__(self, update: Update, ctx: FilterContext) -> Update:
        kept = {k: v for k, v in update.metrics.items() if k in DpSgdFacts.KEYS}
        return _noted(update, "metrics:dp-facts-only", metrics=kept)


@dataclass(frozen=True)
class DpClip:
    """DP-FedAvg (McMahan et al. 2018): the trained model becomes its difference to the
    global model, scaled to L2 norm at most ``clip`` (a ``DELTA``; each array keeps its dtype).
    The bound is on the whole flat difference."""

    clip: float
    name = "dp_clip"

    def __call__(self, update: Update, ctx: FilterContext) -> Update:
        from fedcare.privacy.dp.mechanisms import clip_update, subtract

        if update.kind is not UpdateKind.FULL:
            raise ProtocolError("DP clipping applies to a trained model, got a difference")
        clipped, _norm = clip_update(subtract(update.parameters, ctx.task.parameters),
                                     self.clip)  # the norm stays at the site
        return _noted(update, f"dp-clip:{self.clip:g}", kind=UpdateKind.DELTA,
                      parameters=clipped)


@dataclass(frozen=True)
class DpNoise:
    """DP-FedAvg: the clipped difference onto the grid ``2^-frac_bits`` with its norm still
    at most ``spec.clip`` (exact integer arithmetic), plus - distributed mode - this site's
    discrete Gaussian share ``N_Z(0, (z·C·2^f)^2 / n)`` of the round's ``n`` sampled sites
    (task meta ``dp_sites``, checked against the approved study before the ledger was
    charged). ``keep_float64``: the exact grid values as float64 (what masking secure
    aggregation encodes); otherwise each array's dtype, magnitudes rounded toward zero."""

    spec: PrivacySpec
    frac_bits: int
    keep_float64: bool = False
    name = "dp_noise"

    def __call__(self, update: Update, ctx: FilterContext) -> Update:
        from fedcare.privacy.dp.mechanisms import privatize_on_grid

        if update.kind is not UpdateKind.DELTA:
            raise ProtocolError("DP noise applies to a clipped difference (DpClip first)")
        n = ctx.task.meta.get(DP_SITES)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ProtocolError(f"a DP-FedAvg task must say how many sites the round sampled, "
                                f"got {n!r}")
        z = (self.spec.noise_multiplier
             if self.spec.mechanism is Mechanism.DP_FEDAVG_DISTRIBUTED else 0.0)
        noised = privatize_on_grid(update.parameters, self.spec.clip, self.frac_bits,
                                   noise_multiplier=z, shares=n,
                                   keep_float64=self.keep_float64)
        return _noted(update, f"dp:{self.spec.mechanism.value}", parameters=noised)


# -- secure aggregation ----------------------------------------------------------------------
@dataclass(frozen=True)
class _Entered:
    """What a secure round's fit entered into the protocol: the vector, the reply's other
    fields, and the fingerprint of the task it answered."""

    fingerprint: str
    vector: np.ndarray
    fields: dict[str, Any]


def fit_fingerprint(task: Task) -> str:
    """SHA-256 of everything a fit task asks except its protocol attempt: the global model,
    the arrays sent with it, training config, seed, strategy and meta (participants, DP
    round size). A later attempt must ask exactly this again."""
    h = hashlib.sha256()
    doc = {"round": task.round, "train": task.train.to_json(), "seed": task.seed,
           "strategy": task.strategy, "evaluate": task.evaluate,
           "meta": {k: v for k, v in task.meta.items() if k != ATTEMPT}}
    h.update(json.dumps(doc, sort_keys=True, default=str).encode())
    for group, params in [("model", task.parameters),
                          *sorted((f"aux:{k}", v) for k, v in task.aux.items())]:
        for name, arr in sorted(params.items()):
            a = np.ascontiguousarray(arr)
            h.update(f"|{group}|{name}|{a.dtype.str}|{a.shape}|".encode())
            h.update(a.tobytes())
    return h.hexdigest()


class SecureMask:
    """Secure aggregation (secagg, secagg+): the update enters the round's protocol as
    ``[w·(x − g), w]`` (a DP-FedAvg difference as ``[Δ, 1]``) and the reply carries only the
    protocol's first message. The site keeps the newest round's entry, so a restarted hub's
    later attempt at the round gets the same vector under fresh keys (:meth:`again`), without
    training or charging again."""

    name = "secure_mask"

    def __init__(self, site: SecureSite) -> None:
        self.site = site
        self._entered: dict[int, _Entered] = {}  # the newest round only

    def __call__(self, update: Update, ctx: FilterContext) -> Update:
        task = ctx.task
        vector = (delta_contribution(update.parameters) if update.kind is UpdateKind.DELTA
                  else contribution(update.parameters, task.parameters, update.num_examples))
        fields = {"num_examples": update.num_examples, "metrics": dict(update.metrics),
                  "eval_metrics": dict(update.eval_metrics),
                  "num_eval_examples": update.num_eval_examples}
        self._entered = {task.round: _Entered(fit_fingerprint(task), vector, fields)}
        return _noted(update, f"secure:{task.kind.value}", kind=UpdateKind.DELTA,
                      parameters=Parameters({}), aux=self.site.start(task, vector))

    def again(self, task: Task) -> Update | None:
        """A later attempt at a secure round whose update this site already entered: the
        stored entry under the new attempt's keys (None: the round was not entered). Training
        again would spend the site's privacy budget a second time and, under DP, put a second,
        differently noised copy of the update into the protocol."""
        got = self._entered.get(task.round)
        if got is None:
            return None
        if fit_fingerprint(task) != got.fingerprint:
            raise ProtocolError(f"round {task.round} asked again with another model, training "
                                "config or participant list than this site trained on; "
                                "refusing to enter its update into another round")
        log.info("task %s: round %d's fit asked again (protocol attempt %d; the hub "
                 "restarted?): entering the update trained for it before, without training "
                 "again", task.task_id, task.round, task_attempt(task))
        return Update(task_id=task.task_id, site=task.site, round=task.round,
                      kind=UpdateKind.DELTA, parameters=Parameters({}),
                      aux=self.site.start(task, got.vector),
                      provenance=(f"secure:{task.kind.value}",), **got.fields)


class HeEncrypt(SecureMask):
    """Secure aggregation by homomorphic encryption (ckks): as :class:`SecureMask`, the
    protocol's first message being the site's signed CKKS ciphertext of the vector."""

    name = "he_encrypt"


# -- the chain -------------------------------------------------------------------------------
def site_chain(privacy: SitePrivacy | None, secure: SecureSite | None,
               study_filters: Sequence[UpdateFilter] = ()) -> tuple[UpdateFilter, ...]:
    """A site's update chain for one study, built once from what the APPROVED study and the
    site's settings say (``privacy``: the study's DP and the site's ledger; ``secure``: the
    study's secure aggregation), in the order of the module docstring: ``study_filters``
    first, the site's privacy filters last."""
    chain: list[UpdateFilter] = list(study_filters)
    spec = privacy.spec if privacy is not None else None
    if spec is not None:
        chain.append(DpMetrics())
    if privacy is not None and spec is not None and spec.mechanism.is_dp_fedavg:
        chain.append(DpClip(spec.clip))
        # Under masking secure aggregation the exact float64 grid values are encoded as they
        # are, so the hub's sum is exactly the sum of the sites' noised grid values.
        exact = secure is not None and secure.settings.is_masking
        chain.append(DpNoise(spec, privacy.frac_bits, keep_float64=exact))
    if secure is not None:
        chain.append(SecureMask(secure) if secure.settings.is_masking else HeEncrypt(secure))
    return tuple(chain)
