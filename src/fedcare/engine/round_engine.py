"""The round loop, in one place: configure, send, wait, split done from failed, aggregate,
save. Strategies never touch I/O and transports never touch models.

The same engine drives a simulation (in-memory or worker-process transport) and a networked
federation (HTTPS transport): it hands the transport each exchange's encoded tasks with what
their replies must look like (:class:`~fedcare.transport.base.Outgoing`) and gets back
futures of the decoded replies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from fedcare.core.errors import ConfigError, FedcareError, ValidationError
from fedcare.core.messages import (
    ErrorReply,
    Task,
    TaskKind,
    TrainConfig,
    Update,
    task_id,
)
from fedcare.core.params import Parameters, ParamSpec, check_finite
from fedcare.core.seeds import round_seed
from fedcare.core.wire import ReplyExpectation, encode_task_payload, pack_arrays
from fedcare.engine.aggregation import Aggregation, RoundFailed, RoundInputs, hub_aggregation
from fedcare.engine.checkpoints import Checkpoint, CheckpointSink
from fedcare.engine.history import History, RoundRecord, weighted_mean_metrics
from fedcare.engine.integrity import cap_examples
from fedcare.strategies.aggregate import UpdateStack
from fedcare.strategies.base import Strategy
from fedcare.transport.base import Outgoing, Received, Transport

if TYPE_CHECKING:
    from fedcare.data.prepare import Columns
    from fedcare.engine.privacy import HubPrivacy
    from fedcare.engine.secure import SecureAggregator




@dataclass(frozen=True)
class EngineSettings:
    study: str
    seed: int
    train: TrainConfig
    evaluate_every: int = 1
    round_timeout: float | None = None


@dataclass
class Exchange:
    """Result of sending one task to each of several sites."""

    updates: dict[str, Update]
    failures: dict[str, str]
    bytes_down: int
    bytes_up: int
    seconds: float
    #: Sites whose reply was accepted but looked wrong, and why (e.g. a capped weight).
    flagged: dict[str, str] = field(default_factory=dict)


class RoundEngine:
    def __init__(self, settings: EngineSettings, strategy: Strategy, transport: Transport,
                 sites: Sequence[str], parameters: Parameters, history: History, *,
                 checkpoints: CheckpointSink | None = None,
                 on_round: Callable[[RoundRecord], None] | None = None,
                 secure: SecureAggregator | None = None,
                 privacy: HubPrivacy | None = None,
                 example_bounds: Mapping[str, int] | None = None) -> None:
        """``example_bounds``: the most examples each site may claim (hub: the rows it
        declared for the study's dataset, +9; simulation: its real rows). A reply
        claiming more is capped to the bound and flagged; a site missing from the mapping
        may claim none. None: no bound (a study whose sites are the caller's own)."""
        if not sites:
            raise FedcareError("a study needs at least one site")
        if secure is not None and not strategy.capabilities.aggregates_a_sum:
            # Under secure aggregation the stack holds one row, the sum; a strategy that needs
            # each site's update would silently aggregate that sum instead.
            raise FedcareError(f"strategy {strategy.name} needs each site's update and cannot "
                               "run under secure aggregation")
        self.settings = settings
        self.strategy = strategy
        self.transport = transport
        self.sites = list(sites)
        self.parameters = parameters
        self.spec: ParamSpec = parameters.spec
        self.history = history
        self.checkpoints = checkpoints
        self.on_round = on_round
        #: Secure aggregation (masking or CKKS): the hub then sees only the round's sum.
        self.secure = secure
        #: Differential privacy's hub half (DP-FedAvg weights and noise; epsilon per round).
        self.privacy = privacy
        self.example_bounds = None if example_bounds is None else dict(example_bounds)
        self._stack = UpdateStack(self.spec, capacity=len(self.sites))
        #: Arrays sent with every task besides the strategy's (e.g. the feature normalizer).
        self.extra_aux: dict[str, Parameters] = {}
        #: How a round's fit replies become the stack the strategy aggregates: plain or
        #: secure sum, central DP noise around it (engine.aggregation), built once.
        self.aggregation: Aggregation = hub_aggregation(
            secure=secure, privacy=privacy, exchange=self._protocol_step,
            study=settings.study, min_completed=strategy.sampling.min_completed,
            example_bounds=self.example_bounds)

    # -- one exchange of tasks and replies ------------------------------------------------
    def exchange(self, round_: int, sites: Sequence[str], kind: TaskKind, *,
                 evaluate: bool, train: TrainConfig, aux: Mapping[str, Parameters],
                 expected_aux: Mapping[str, ParamSpec | None] | None = None,
                 meta: Mapping[str, Any] | None = None, attempt: int = 1,
                 parameters: Parameters | None = None,
                 timeout: float | None = None) -> Exchange:
        """Send the global model (or ``parameters``, with ``aux``) to ``sites`` and collect
        their replies (``attempt``: a secure round's protocol attempt, see :meth:`task_id`;
        ``timeout``: seconds to wait instead of the round timeout)."""
        start = time.perf_counter()
        s = self.settings
        model = self.parameters if parameters is None else parameters
        aux = {**aux, **self.extra_aux}
        arrays = pack_arrays(model, aux)
        expected = self.spec if kind is TaskKind.FIT else ParamSpec({})
        if expected_aux is None:
            expected_aux = self.strategy.expected_aux(self.spec) if kind is TaskKind.FIT else {}
        if meta and meta.get("secure") and kind is TaskKind.FIT:  # answered by protocol msgs
            from fedcare.engine.secure import PROTOCOL_AUX

            expected, expected_aux = ParamSpec({}), {PROTOCOL_AUX: None}
        tasks = {}
        for site in sites:
            task = Task(task_id=self.task_id(round_, kind, site, attempt), study=s.study,
                        round=round_, site=site, kind=kind, parameters=model,
                        train=train, aux=aux, seed=s.seed, evaluate=evaluate,
                        strategy=self.strategy.name, meta=dict(meta or {}))
            tasks[site] = encode_task_payload(task, arrays=arrays)
        out = Outgoing(round_, kind, tasks, ReplyExpectation(expected, dict(expected_aux)),
                       attempt)
        return self._collect(out, start, timeout=timeout)

    def protocol_exchange(self, round_: int, kind: TaskKind,
                          aux: Mapping[str, Mapping[str, Parameters]],
                          meta: Mapping[str, Any]) -> Exchange:
        """One protocol step: a different small message per site (``aux[site]``), no model;
        replies carry protocol messages the protocol itself validates."""
        from fedcare.engine.secure import ATTEMPT, PROTOCOL_AUX

        start = time.perf_counter()
        s = self.settings
        attempt = int(meta.get(ATTEMPT, 1))
        tasks = {site: encode_task_payload(Task(
            task_id=self.task_id(round_, kind, site, attempt), study=s.study, round=round_,
            site=site, kind=kind, parameters=Parameters({}), train=s.train, aux=site_aux,
            seed=s.seed, evaluate=False, strategy=self.strategy.name, meta=dict(meta)))
            for site, site_aux in aux.items()}
        out = Outgoing(round_, kind, tasks, ReplyExpectation(ParamSpec({}), {PROTOCOL_AUX: None}),
                       attempt)
        return self._collect(out, start)

    def _protocol_step(self, round_: int, kind: TaskKind,
                       aux: Mapping[str, Mapping[str, Parameters]],
                       meta: Mapping[str, Any]) -> Exchange:
        """The one place the secure aggregator's steps reach the protocol exchange (its
        :data:`~fedcare.engine.secure.ExchangeFn`)."""
        return self.protocol_exchange(round_, kind, aux, meta)

    def task_id(self, round_: int, kind: TaskKind, site: str, attempt: int = 1) -> str:
        """Deterministic, so a restarted hub re-creates a round's tasks instead of new ones;
        a secure round's later protocol attempt has its own (see :func:`task_id`)."""
        return task_id(self.settings.study, round_, kind, site, attempt)

    def _collect(self, out: Outgoing, start: float, timeout: float | None = None) -> Exchange:
        s = self.settings
        wait = s.round_timeout if timeout is None else timeout
        bytes_down = sum(len(p) for p in out.tasks.values())
        futures: dict[str, Future[Received]] = self.transport.send(out)
        deadline = None if wait is None else start + wait
        updates: dict[str, Update] = {}
        failures: dict[str, str] = {}
        flagged: dict[str, str] = {}
        bytes_up = 0
        for site, fut in futures.items():
            remaining = None if deadline is None else max(0.0, deadline - time.perf_counter())
            try:
                received = fut.result(timeout=remaining)
            except FutureTimeout:
                failures[site] = "no reply before the round deadline"
                continue
            except ValidationError as exc:  # the transport decoded it with out.expect
                failures[site] = f"rejected update: {exc.message}"
                continue
            except FedcareError as exc:
                failures[site] = exc.message
                continue
            bytes_up += received.size
            decoded = received.reply
            if isinstance(decoded, ErrorReply):
                failures[site] = f"{decoded.error_type}: {decoded.message}"
            elif decoded.site != site or decoded.task_id != self.task_id(out.round, out.kind,
                                                                         site, out.attempt):
                failures[site] = "reply does not answer the task sent to this site"
            else:
                updates[site] = decoded
                if self.example_bounds is not None:
                    updates[site], why = cap_examples(decoded, self.example_bounds.get(site, 0))
                    if why is not None:
                        flagged[site] = why
        return Exchange(updates, failures, bytes_down, bytes_up, time.perf_counter() - start,
                        flagged)

    # -- rounds ---------------------------------------------------------------------------
    def _evaluates_incoming(self, round_: int) -> bool:
        """Whether round ``round_``'s tasks also evaluate the model they carry (round-1's)."""
        k = self.settings.evaluate_every
        return k > 0 and (round_ - 1) % k == 0

    def run_round(self, round_: int) -> RoundRecord:
        t0 = time.perf_counter()
        rng = np.random.default_rng(round_seed(self.settings.seed, round_))
        sampled = self.strategy.sample(self.sites, rng)
        train = self.strategy.train_config(self.settings.train)
        evaluate = self._evaluates_incoming(round_)
        # A secure round runs its protocol from the fit step; a hub restarted mid-round runs it
        # again as a new attempt (new task ids, fresh keys; the sites re-enter the update they
        # already trained, see SecureSite).
        attempt = self.secure.attempt(round_) if self.secure is not None else 1
        meta = {**(self.secure.meta(round_, sampled) if self.secure is not None else {}),
                **(self.privacy.meta(sampled) if self.privacy is not None else {})}
        ex = self.exchange(round_, sampled, TaskKind.FIT, evaluate=evaluate, train=train,
                           aux=self.strategy.task_aux(), meta=meta, attempt=attempt)
        record = RoundRecord(round=round_, train_seconds=ex.seconds, bytes_down=ex.bytes_down,
                             bytes_up=ex.bytes_up, sites_sampled=list(sampled),
                             sites_completed=sorted(ex.updates), sites_failed=ex.failures,
                             sites_flagged=dict(ex.flagged))
        if evaluate:
            self._record_evaluation(round_ - 1, ex.updates)
        need = self.strategy.sampling.min_completed
        if len(ex.updates) < need:
            raise RoundFailed(
                f"round {round_}: only {len(ex.updates)} of {len(sampled)} sites completed "
                f"(need {need}); failures: {ex.failures}")
        t1 = time.perf_counter()
        self._stack.clear()
        kind = self.aggregation.combine(
            RoundInputs(round_, sampled, ex.updates, ex.failures, self.parameters, record),
            self._stack).kind
        if self._stack.weights.sum() <= 0:
            raise RoundFailed(f"round {round_}: the sites that completed trained on no examples")
        new = self.strategy.aggregate(round_, self.parameters, self._stack, kind,
                                      {s: u.aux for s, u in ex.updates.items()})
        check_finite(new, what=f"aggregated model of round {round_}")
        self.parameters = new
        record.aggregate_seconds = time.perf_counter() - t1
        record.train_metrics = {s: {**u.metrics, "seconds": u.seconds}
                                for s, u in sorted(ex.updates.items())}
        self._note_rows(ex.updates)
        record.seconds = time.perf_counter() - t0  # what the checkpoint records...
        self.history.rounds.append(record)
        if self.privacy is not None:
            self.history.meta["privacy"] = self.privacy.report(self.history.rounds)
            record.epsilon = self.history.meta["privacy"]["epsilon"]
        if self.checkpoints is not None:
            self.checkpoints.save(round_, self.parameters, self.strategy.state(), self.history)
        record.seconds = time.perf_counter() - t0  # ...and, in memory, the checkpoint included
        if self.on_round is not None:
            self.on_round(record)
        return record

    def _note_rows(self, updates: Mapping[str, Update]) -> None:
        """Row counts the sites reported (a networked hub learns them only from updates)."""
        from fedcare.engine.executor import TEST_SPLIT_NOTE

        known = {row["name"]: row for row in self.history.sites}
        for site, u in updates.items():
            row = known.get(site)
            if row is None:
                row = {"name": site, "train_rows": None, "test_rows": None}
                self.history.sites.append(row)
                known[site] = row
            if u.num_examples:
                row["train_rows"] = u.num_examples
            if u.eval_metrics:
                row["test_rows"] = u.num_eval_examples
            for note in u.provenance:  # how the site chose its test rows (evaluate replies)
                if note.startswith(TEST_SPLIT_NOTE) and len(note) <= 200:
                    row["test_split"] = note[len(TEST_SPLIT_NOTE):]

    def _record_evaluation(self, model_round: int, updates: Mapping[str, Update]) -> None:
        per_site = {s: dict(u.eval_metrics) for s, u in sorted(updates.items()) if u.eval_metrics}
        if not per_site:
            return
        weights = {s: u.num_eval_examples for s, u in updates.items()}
        glob = weighted_mean_metrics(per_site, weights)
        if model_round == 0:
            self.history.initial = {"site_metrics": per_site, "global_metrics": glob}
            return
        for rec in self.history.rounds:
            if rec.round == model_round:
                rec.site_metrics, rec.global_metrics = per_site, glob

    def evaluate_all(self, round_: int) -> dict[str, Any]:
        """Evaluate the current global model at every site (evaluation-only tasks)."""
        ex = self.exchange(round_, self.sites, TaskKind.EVALUATE, evaluate=True,
                           train=self.settings.train, aux={})
        self._note_rows(ex.updates)
        per_site = {s: dict(u.eval_metrics) for s, u in sorted(ex.updates.items())
                    if u.eval_metrics}
        weights = {s: u.num_eval_examples for s, u in ex.updates.items()}
        out = {"site_metrics": per_site,
               "global_metrics": weighted_mean_metrics(per_site, weights),
               "sites_failed": ex.failures}
        if ex.flagged:
            out["sites_flagged"] = ex.flagged
        return out

    def local_baselines(self, initial: Parameters, train: TrainConfig,
                        rounds: int) -> dict[str, Any]:
        """Ask every site to train ``initial`` (the study's initial model) alone on its own
        training rows and report the held-out metrics of what it trained (``local_baseline``
        tasks of round ``rounds + 1``, beside the final evaluation; each site trains as many
        rounds as the study it approved, with ``train``, and never sends the model; the
        deadline is ``rounds`` round timeouts). The same block as simulation's local-only baseline
        (``site_metrics``, example-weighted ``global_metrics``) plus the sites that refused
        or failed and why; a site's refusal never fails the study."""
        if initial.spec != self.spec:
            raise ValidationError("the local-only baseline's initial model has another layout "
                                  "than the study's")
        timeout = self.settings.round_timeout
        ex = self.exchange(rounds + 1, self.sites, TaskKind.LOCAL_BASELINE, evaluate=False,
                           train=train, aux={}, expected_aux={}, parameters=initial,
                           timeout=None if timeout is None else timeout * max(rounds, 1))
        per_site = {s: dict(u.eval_metrics) for s, u in sorted(ex.updates.items())
                    if u.eval_metrics}
        weights = {s: u.num_eval_examples for s, u in ex.updates.items()}
        return {"site_metrics": per_site,
                "global_metrics": weighted_mean_metrics(per_site, weights),
                "sites_failed": dict(sorted(ex.failures.items()))}

    def feature_statistics(self, n_features: int,
                           bounds: tuple[np.ndarray, np.ndarray] | None = None,
                           columns: Columns | None = None) -> Parameters:
        """Federation-wide feature mean/std from every site's sums (no row leaves a site).

        Sent as ``stats`` tasks of round 0 (before round 1's training); every site must
        answer, since a normalizer computed without a site would not describe its data. In a
        secure study each site's ``[count, sums, sums of squares]`` goes through the study's
        secure aggregation (:class:`~fedcare.engine.secure.SecureVectorSum`) and the hub
        learns only the federation's total. ``bounds`` (a DP study's declared feature
        ranges): the sites sent DP-noised sums of clipped values, pooled accordingly.
        ``columns`` (a study that imputes or encodes categories, :mod:`fedcare.data.prepare`):
        the sums cover the numeric features (``n_features`` of them) with their counts of
        observed values, each site also reports its category levels (names only, plain, small
        cells suppressed), and the normalizer carries the fill values and the level list.
        """
        from fedcare.engine.executor import (
            LEVELS,
            STATS,
            split_stats_vector,
            stats_expected_aux,
            stats_spec,
        )
        from fedcare.engine.privacy import STATS_ROUND

        if columns is not None and not columns.active:
            columns = None
        observed = columns is not None and columns.impute != "none"
        secure = self.secure is not None
        expected = (stats_expected_aux(columns, secure=secure) if columns is not None
                    else {STATS: stats_spec(n_features)})
        if self.secure is None:
            ex = self.exchange(STATS_ROUND, self.sites, TaskKind.STATS, evaluate=False,
                               train=self.settings.train, aux={}, expected_aux=expected)
            if ex.failures:
                raise RoundFailed(f"feature statistics failed at {sorted(ex.failures)}: "
                                  f"{ex.failures}")
            return self._pool_stats([ex.updates[s].aux[STATS] for s in self.sites], bounds,
                                    columns, ex)
        from fedcare.engine.secure import PROTOCOL_AUX, SecureVectorSum

        ex = self.exchange(STATS_ROUND, self.sites, TaskKind.STATS, evaluate=False,
                           train=self.settings.train, aux={},
                           expected_aux=expected if columns is not None
                           else {PROTOCOL_AUX: None},
                           meta=self.secure.settings.meta(self.sites))
        failures = dict(ex.failures)
        if not failures:
            size = 1 + (3 if observed else 2) * n_features
            try:
                got = SecureVectorSum(self.secure).run(
                    self._protocol_step, STATS_ROUND, self.sites,
                    {s: replace(u, aux={k: v for k, v in u.aux.items() if k != LEVELS})
                     for s, u in ex.updates.items()}, size, study=self.settings.study)
            except FedcareError as exc:
                raise RoundFailed(f"feature statistics: secure aggregation aborted: "
                                  f"{exc.message}") from exc
            failures = {s: got.failures.get(s, "left out of the secure sum")
                        for s in self.sites if s not in got.included}
        if failures:
            raise RoundFailed(f"feature statistics failed at {sorted(failures)}: {failures}")
        return self._pool_stats([split_stats_vector(got.total, n_features, observed=observed)],
                                bounds, columns, ex)

    def _pool_stats(self, replies: list[Parameters],
                    bounds: tuple[np.ndarray, np.ndarray] | None, columns: Columns | None,
                    ex: Exchange) -> Parameters:
        from fedcare.engine.executor import LEVELS, pool_stats

        self._note_dropped(ex.updates)
        levels = ([u.aux[LEVELS] for _, u in sorted(ex.updates.items())]
                  if columns is not None and columns.categorical else None)
        try:
            return pool_stats(replies, bounds, columns, levels)
        except ValidationError as exc:
            raise RoundFailed(f"feature statistics: {exc.message}") from exc

    def _note_dropped(self, updates: Mapping[str, Update]) -> None:
        """The rows each site said (in its stats reply) it dropped, by reason, in the
        history's site rows (``rows_dropped``); a simulation's exact counts are kept."""
        from fedcare.engine.executor import DROPPED

        known = {row["name"]: row for row in self.history.sites}
        for site, u in sorted(updates.items()):
            dropped = {k[len(DROPPED):]: int(v) for k, v in u.metrics.items()
                       if k.startswith(DROPPED)}
            if not dropped:
                continue
            row = known.get(site)
            if row is None:
                row = {"name": site, "train_rows": None, "test_rows": None}
                self.history.sites.append(row)
            row.setdefault("rows_dropped", dropped)

    def resume(self, checkpoint: Checkpoint) -> int:
        """Continue from ``checkpoint`` (a simulation's file or a hub's blobs: the same
        record); the round to run next.

        The engine takes the checkpoint's model, strategy state and history. Keys of the
        fresh history that the checkpoint lacks (written by an older version) are kept;
        the saved ones win, so facts fixed when the study started (when it was created,
        each site's example bound) stay fixed. Refused when the study's configuration
        changed since the checkpoint (its content hash differs) or when the checkpoint's
        model has another layout.
        """
        saved = checkpoint.history
        want, got = self.history.meta.get("config_hash"), saved.meta.get("config_hash")
        if want is not None and got != want:
            raise ConfigError("cannot resume: the configuration changed since the study "
                              "started (its content hash differs)")
        if checkpoint.parameters.spec != self.spec:
            raise FedcareError("cannot resume: the checkpoint's model layout differs from "
                               "the study's")
        for key, value in self.history.meta.items():
            saved.meta.setdefault(key, value)
        saved.meta["resumed_from_round"] = checkpoint.round
        bounds = saved.meta.get("example_bounds")
        if self.example_bounds is not None and isinstance(bounds, Mapping):
            self.example_bounds = {str(k): int(v) for k, v in bounds.items()}
        self.parameters = checkpoint.parameters
        self.strategy.initialize(checkpoint.parameters)
        self.strategy.load_state(checkpoint.strategy_state)
        self.history = saved
        return checkpoint.round + 1

    def run(self, rounds: int, start_round: int = 1) -> Parameters:
        """Rounds ``start_round..rounds`` then a final evaluation at every site.

        A fresh study (``start_round == 1``) initialises the strategy's state; a resumed one
        must have been restored by :meth:`resume` already.
        """
        if start_round == 1:
            self.strategy.initialize(self.parameters)
        for r in range(start_round, rounds + 1):
            self.run_round(r)
        final = self.evaluate_all(rounds + 1)
        self.history.final = final
        last = self.history.rounds[-1] if self.history.rounds else None
        if last is not None and final["site_metrics"]:
            last.site_metrics = dict(final["site_metrics"])
            last.global_metrics = dict(final["global_metrics"])
        return self.parameters
