"""Site side: turn a task (bytes) into an update (bytes) with the site's learner and data.

This is the code a site node runs in deployment and what every simulated site runs: it decodes
and validates the task against the model the site expects, runs the strategy's site half,
trains, evaluates, and encodes the reply. Any failure becomes an :class:`ErrorReply` - errors
cross the boundary as data - so one broken site never takes the round down with it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedcare.core.dataset import SiteData
from fedcare.core.errors import DataError, FedcareError, ProtocolError, ValidationError
from fedcare.core.learning import Learner
from fedcare.core.messages import ErrorReply, Task, TaskKind, Update, UpdateKind
from fedcare.core.params import ArraySpec, Parameters, ParamSpec
from fedcare.core.seeds import site_round_seed
from fedcare.core.wire import Framed, decode_task, encode_error, encode_update
from fedcare.data.prepare import Columns, SiteColumns
from fedcare.engine.filters import FilterContext, SecureMask, UpdateFilter, site_chain
from fedcare.engine.privacy import SitePrivacy
from fedcare.engine.secure import SecureSite, vector_contribution
from fedcare.engine.site_state import SiteStateStore
from fedcare.strategies import site_algorithm

if TYPE_CHECKING:
    from fedcare.engine.site_policy import ReleaseGate

#: Task aux entry carrying the federation-wide feature ``mean`` and ``std``.
NORMALIZER = "norm"
#: Provenance prefix of an evaluation reply saying how the site chose its test rows
#: (``test:random 20 % split``, ``test:fixed file test.csv``), for the history and report.
TEST_SPLIT_NOTE = "test:"
#: Aux entry of a stats reply: per-feature ``sum`` and ``sumsq`` and the row ``count``.
#: (Under DP they are sums of the clipped, rescaled values ``u`` and noised; under secure
#: aggregation no stats reply exists: the site's ``[count, sum, sumsq]`` vector goes into the
#: secure sum and the hub learns only the federation's total.)
STATS = "stats"
#: A site never reports feature statistics over fewer rows than this (small-cell rule). Under
#: secure aggregation the hub learns only the total over every site (each with at least this
#: many rows), and a secure sum never holds a single site.
MIN_STATS_ROWS = 10
#: Aux entry of a stats reply in a study with categorical features: the levels the site holds
#: in at least 10 training rows, per column (JSON as bytes, see
#: :func:`fedcare.data.prepare.text_array`). Level names, never counts.
LEVELS = "levels"
#: Metric prefix of a stats reply: rows the site dropped (e.g. without a label), by reason.
DROPPED = "rows_dropped/"
log = logging.getLogger("fedcare.node")


#: How the baselines of a DP study are labelled in the history and the report.
BASELINE_NO_DP = "no DP — reference only"


def baseline_note(privacy_mode: str) -> dict[str, str]:
    """How privacy applies to a study's baselines, recorded in each baseline block.

    The baselines are reference points: local-only is what a site gets without joining,
    pooled what the data would give without federation. Site-level DP-FedAvg protects a
    site's contribution among several and means nothing for one site alone (nor for pooled
    data), and record-level DP-SGD on a baseline would mix the privacy cost into the
    federation comparison. So every baseline trains without DP and is labelled so: the gap
    between the DP federated model and the baselines is the price of federation *and*
    privacy together. (A networked site's local-only model never leaves it; only its
    held-out metrics do, as an evaluation's.)
    """
    if privacy_mode == "none":
        return {}
    return {"privacy": "none", "note": BASELINE_NO_DP}


class Refused(FedcareError):
    """The site's own settings refuse what a valid task asks (its reply's error type, as
    the node's refusals of unapproved studies)."""


@dataclass(frozen=True)
class LocalBaseline:
    """Whether and how a site trains a study's model alone (the local-only baseline).

    Everything here comes from the study the site approved and from the site's own settings,
    never from a task: ``rounds`` is the approved study's rounds (the site alone does the
    study's local work, rounds x the task's local epochs or steps), ``learner`` trains without
    DP (the baselines are references trained without DP, as in simulation; None: the site's
    learner), and ``refusal`` says why this site will not do it (None: it will).
    """

    rounds: int
    learner: Learner | None = None
    refusal: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.rounds, int) or isinstance(self.rounds, bool) or self.rounds < 1:
            raise ValidationError(f"a local-only baseline trains >= 1 rounds, got {self.rounds!r}")


#: Why a site refuses a local-baseline task when its executor was given no
#: :class:`LocalBaseline` (the approved study asks for none).
NO_LOCAL_BASELINE = ("the study this site approved does not ask for a local-only baseline "
                     "([baselines] local_at_sites = false)")


def stats_vector(count: float, total: np.ndarray, total_sq: np.ndarray,
                 observed: np.ndarray | None = None) -> np.ndarray:
    """``[count, sum..., sumsq...]`` (a study that imputes: ``[..., observed...]``, each
    feature's count of observed values): a site's statistics as one vector for a secure sum."""
    parts: list[np.ndarray] = [np.array([float(count)]), np.asarray(total, np.float64),
                               np.asarray(total_sq, np.float64)]
    if observed is not None:
        parts.append(np.asarray(observed, np.float64))
    return np.concatenate(parts)


def stats_spec(n_features: int, *, observed: bool = False) -> ParamSpec:
    """Layout of a stats reply's aux arrays (``observed``: with the observed-value counts)."""
    arrays = {"sum": ArraySpec((n_features,), "float64"),
              "sumsq": ArraySpec((n_features,), "float64"),
              "count": ArraySpec((1,), "float64")}
    if observed:
        arrays["nobs"] = ArraySpec((n_features,), "float64")
    return ParamSpec(arrays)


def stats_expected_aux(columns: Columns, *, secure: bool) -> dict[str, ParamSpec | None]:
    """What a stats reply of a study with these columns carries: the sums (or, in a secure
    study, the protocol's first message) and, with categorical features, the level report."""
    from fedcare.engine.secure import PROTOCOL_AUX

    out: dict[str, ParamSpec | None] = (
        {PROTOCOL_AUX: None} if secure else
        {STATS: stats_spec(len(columns.numeric), observed=columns.impute != "none")})
    if columns.categorical:
        out[LEVELS] = None  # bytes of JSON, parsed strictly by federation_levels
    return out


def pool_stats(replies: list[Parameters],
               bounds: tuple[np.ndarray, np.ndarray] | None = None,
               columns: Columns | None = None,
               levels: list[Parameters] | None = None) -> Parameters:
    """Federation-wide mean and std from the sites' stats replies (same rule as simulation).

    ``bounds`` (each feature's declared ``(low, high)``): the replies hold DP-noised sums of
    the clipped, rescaled values, pooled by :func:`~fedcare.data.standardize.pool_bounded`.
    ``columns`` (a study that imputes or encodes categories, see :mod:`fedcare.data.prepare`):
    the replies cover the numeric features; the normalizer then also holds the fill values
    (``fill``) and the federation's level list (``levels``, from the sites' ``levels``
    reports), and its ``mean``/``std`` span the encoded columns (one-hot ones unscaled)."""
    from fedcare.data.standardize import impute_sums, pool_bounded, pool_sums

    counts = [float(r["count"][0]) for r in replies]
    sums, sumsqs = [r["sum"] for r in replies], [r["sumsq"] for r in replies]
    count, total, total_sq = sum(counts), np.sum(sums, axis=0), np.sum(sumsqs, axis=0)
    fill = None
    if columns is not None and columns.impute != "none":
        try:
            fill, total, total_sq = impute_sums(count, total, total_sq,
                                                np.sum([r["nobs"] for r in replies], axis=0),
                                                bounded=bounds is not None)
        except ValueError as exc:
            names = [columns.features[i] for i in columns.numeric]
            raise ValidationError(f"{exc} (numeric features: {names})") from exc
    if bounds is not None:
        mean, std = pool_bounded(count, total, total_sq, *bounds)
        if fill is not None:
            low, high = bounds
            fill = (low + high) / 2 + (high - low) / 2 * fill
    else:
        mean, std = pool_sums([count], [total], [total_sq])
    if columns is None or not columns.active:
        return Parameters({"mean": mean, "std": std})
    return _encoded_normalizer(columns, mean, std, fill, levels or [])


def _encoded_normalizer(columns: Columns, mean: np.ndarray, std: np.ndarray,
                        fill: np.ndarray | None, levels: list[Parameters]) -> Parameters:
    from fedcare.data.prepare import array_text, federation_levels, text_array

    if not columns.standardize:
        mean, std = np.zeros_like(mean), np.ones_like(std)
    full_mean = np.zeros(columns.width, np.float32)
    full_std = np.ones(columns.width, np.float32)
    c = k = 0
    for f in columns.features:
        if f in columns.categorical:
            c += columns.max_levels
        else:
            full_mean[c], full_std[c] = mean[k], std[k]
            c, k = c + 1, k + 1
    out = {"mean": full_mean, "std": full_std}
    if fill is not None:
        out["fill"] = np.asarray(fill, np.float64)
    if columns.categorical:
        reports = [array_text(p["text"]) for p in levels]
        if not all(isinstance(r, dict) for r in reports):
            raise ValidationError("a site's level report is not a table of columns")
        try:
            out["levels"] = text_array(federation_levels(reports, columns))  # type: ignore[arg-type]
        except DataError as exc:
            raise ValidationError(exc.message) from exc
    return Parameters(out)


def split_stats_vector(total: np.ndarray, n_features: int, *,
                       observed: bool = False) -> Parameters:
    """A (summed) :func:`stats_vector` back as a stats reply's arrays."""
    size = (3 if observed else 2) * n_features + 1
    if total.shape != (size,):
        raise ValidationError(f"a stats vector for {n_features} features has "
                              f"{size} values, got {total.shape}")
    out = {"sum": total[1:1 + n_features], "sumsq": total[1 + n_features:1 + 2 * n_features],
           "count": total[:1].copy()}
    if observed:
        out["nobs"] = total[1 + 2 * n_features:]
    return Parameters(out)


class SiteExecutor:
    """Executes tasks for one site.

    ``strategy`` is the approved study's strategy: the site runs its site half (e.g.
    SCAFFOLD's control variates) and refuses any task that names another. It used to run
    whichever half the task named, so a hub could switch an approved DP-FedAvg study to
    SCAFFOLD and receive each site's unclipped update as its control-variate change
    (architecture review P5). The default, plain FedAvg, has no site half.
    """

    def __init__(self, data: SiteData, learner: Learner, *, site_index: int,
                 expected: ParamSpec, state_dir: Path | None = None,
                 secure: SecureSite | None = None,
                 privacy: SitePrivacy | None = None, strategy: str = "fedavg",
                 local_baseline: LocalBaseline | None = None,
                 release: ReleaseGate | None = None) -> None:
        #: The approved study's strategy, and its site half (from the study, never a task).
        self.strategy = strategy
        self.algorithm = site_algorithm(strategy)
        self.data = data
        self.learner = learner
        self.site_index = site_index
        self.expected = expected
        self.state = SiteStateStore(state_dir)
        #: Set when the approved study protects updates by secure aggregation: the site then
        #: never sends its update in the clear, whatever a task asks.
        self.secure = secure
        #: The study's DP and the site's privacy ledger (charged before data is touched).
        self.privacy = privacy
        #: Whether (and how) the site trains the study's model alone when the hub asks.
        self.local_baseline = local_baseline
        #: The site policy's per-task rules (engine.site_policy): a round past its maximum
        #: is refused, metrics it keeps at the site are dropped from every reply.
        self.release = release

        #: A table read raw (missing values, category codes): encoded once the federation's
        #: fill values and level list arrive with the normalizer.
        self.columns: SiteColumns | None = getattr(data, "columns", None)
        self._norm_key: bytes | None = None
        self._norm_data: SiteData = data
        #: What happens to a trained update before it leaves the site, in order (built once
        #: from the approved study: the site's privacy filters last, see engine.filters).
        self.chain: tuple[UpdateFilter, ...] = site_chain(privacy, secure)
        #: The chain's secure-aggregation step (None: the study sends plain updates); it keeps
        #: the newest secure round's entry for a restarted hub's next attempt at the round.
        self._secure_step = next((f for f in self.chain if isinstance(f, SecureMask)), None)

    @property
    def name(self) -> str:
        return self.data.name

    def _normalized(self, norm: Parameters | None) -> SiteData:
        """The site's data scaled by the federation's mean/std when the task carries them
        (cached: the same normalizer arrives with every task of a study)."""
        if norm is None:
            if self.columns is not None:
                raise ProtocolError("the approved study imputes or encodes categories but the "
                                    "task carries no federation statistics")
            return self.data
        key = b"|".join(norm[k].tobytes() for k in sorted(norm))
        if key != self._norm_key and self.columns is not None:
            from fedcare.data.prepare import prepared

            d = self.data
            try:
                self._norm_data = replace(d, x_train=prepared(d.x_train, self.columns, norm),
                                          x_test=prepared(d.x_test, self.columns, norm))
            except DataError as exc:
                raise ValidationError(exc.message) from exc
            self._norm_key = key
        if key != self._norm_key:
            d = self.data
            if d.x_train.shape[1:] != norm["mean"].shape:
                raise ValidationError("normalizer does not match the site's feature count")
            mean, std = norm["mean"], norm["std"]
            self._norm_data = replace(d, x_train=((d.x_train - mean) / std).astype(np.float32),
                                      x_test=((d.x_test - mean) / std).astype(np.float32))
            self._norm_key = key
        return self._norm_data

    def _check_stats(self, task: Task) -> int | None:
        """Refuse a stats task the approved study does not allow, before anything is charged
        or computed; returns, for DP statistics, how many sites' noise shares any sum the hub
        can learn is guaranteed to hold (1 without secure aggregation), else None."""
        from fedcare.engine.secure import sites_in_any_sum

        n = len(self.data.x_train)
        if n < MIN_STATS_ROWS:
            raise FedcareError(f"refusing to report feature statistics over {n} rows "
                               f"(fewer than {MIN_STATS_ROWS})")
        if (self.secure is not None) != bool(task.meta.get("secure")):
            raise ProtocolError(
                "the approved study protects its statistics with secure aggregation but the "
                "task asks for plain ones" if self.secure is not None else
                "the task asks for secure aggregation but the approved study does not use it")
        in_sum = 1
        if self.secure is not None:
            self.secure.check(task)
            in_sum = sites_in_any_sum(self.secure.settings, len(task.meta["participants"]))
        p = self.privacy
        if p is None or p.spec is None:
            return None
        if p.stats_noise is None:  # a DP study that does not standardize
            raise ProtocolError("the approved DP study releases no feature statistics")
        return in_sum

    def _stats(self, task: Task, start: float, in_sum: int | None) -> Update:
        from fedcare.data.standardize import site_sums, site_sums_observed

        x, names = self.data.x_train, self.data.feature_names
        observed = None
        cols = self.columns.columns if self.columns is not None else None
        imputes = cols is not None and cols.impute != "none"
        if cols is not None:  # the numeric features only (NaN: missing)
            x, names = x[:, cols.numeric], tuple(names[i] for i in cols.numeric)
        if in_sum is None:
            if imputes:
                n, total, total_sq, observed = site_sums_observed(x)
            else:
                n, total, total_sq = site_sums(x)
            count = float(n)
        else:  # DP: clipped to the declared ranges, rescaled, noised
            assert self.privacy is not None
            count, total, total_sq, observed = self.privacy.noised_stats_observed(
                x, names, in_sum, observed=imputes)
            n = 0  # the reply states no exact row count
        aux: dict[str, Parameters] = {}
        if cols is not None and cols.categorical:
            from fedcare.data.prepare import reported_levels, text_array

            assert self.columns is not None
            aux[LEVELS] = Parameters({"text": text_array(
                reported_levels(self.data.x_train, self.columns))})
        metrics = self._dropped_metrics(dp=in_sum is not None)
        if self.secure is not None:
            return self._protocol_reply(
                task, {**self.secure.start(task, vector_contribution(
                    stats_vector(count, total, total_sq, observed))), **aux}, start,
                num_examples=0, metrics=metrics)
        stats = {"sum": total, "sumsq": total_sq, "count": np.array([count])}
        if observed is not None:
            stats["nobs"] = observed
        provenance = (("stats:" + ",".join(stats),)
                      + (("dp:gaussian",) if in_sum is not None else ()))
        return Update(task_id=task.task_id, site=self.name, round=task.round,
                      kind=UpdateKind.FULL, parameters=Parameters({}), num_examples=n,
                      aux={STATS: Parameters(stats), **aux}, provenance=provenance,
                      metrics=metrics, seconds=time.perf_counter() - start)

    def _dropped_metrics(self, *, dp: bool) -> dict[str, float]:
        """The rows the site dropped, by reason (``rows_dropped/<reason>``), rounded down to a
        multiple of 10 like the row count a node shows the hub (the exact figure is in the
        site's log); none under DP, where only noised statistics leave the site."""
        if self.columns is None or dp:
            return {}
        return {f"{DROPPED}{reason}": float(n // 10 * 10)
                for reason, n in self.columns.dropped.items()}

    def _local_baseline(self, task: Task, start: float) -> Update:
        """Train the task's model (the study's initial weights) on this site's training rows
        alone, as many rounds of local training as the approved study has, each round seeded
        as this site's fit of that round is; evaluate it on the site's test rows and reply
        with those metrics only. The trained model never leaves the site.

        Nothing is charged to the site's privacy ledger: like an evaluation, the reply holds
        metrics of held-out rows, and the model is trained without DP (a reference point,
        labelled so in the history). A site that will not release them refuses (its
        node config's ``[baselines] local = false``, or a ``require_dp`` privacy policy)."""
        lb = self.local_baseline
        if lb is None:
            raise Refused(NO_LOCAL_BASELINE)
        if lb.refusal is not None:
            raise Refused(lb.refusal)
        if task.aux.keys() - {NORMALIZER}:
            raise ProtocolError("a local-baseline task carries no strategy arrays")
        learner = lb.learner or self.learner
        d = self._normalized(task.aux.get(NORMALIZER))
        params = task.parameters
        for r in range(1, lb.rounds + 1):
            params = learner.fit(params, d.x_train, d.y_train, task.train,
                                 seed=site_round_seed(task.seed, r, self.site_index)).parameters
        metrics = learner.evaluate(params, d.x_test, d.y_test) if len(d.x_test) else {}
        return Update(task_id=task.task_id, site=self.name, round=task.round,
                      kind=UpdateKind.FULL, parameters=Parameters({}), num_examples=0,
                      eval_metrics=metrics, num_eval_examples=len(d.x_test),
                      provenance=(f"local_baseline:{learner.name}", f"rounds:{lb.rounds}"),
                      seconds=time.perf_counter() - start)

    def handle(self, payload: bytes | Framed) -> bytes:
        """Bytes in, bytes out: the transport-facing entry point (a node passes the message
        whose header it already read, so the header is parsed once per side)."""
        task_id, round_ = "", -1
        try:
            task = decode_task(payload, self.expected)
            task_id, round_ = task.task_id, task.round
            if task.site != self.name:
                raise FedcareError(f"task addressed to {task.site!r} reached {self.name!r}")
            return encode_update(self.run(task))
        except Exception as exc:  # noqa: BLE001 (the site boundary: every failure becomes an error reply)
            kind = type(exc).__name__ if isinstance(exc, FedcareError) else "InternalError"
            return encode_error(ErrorReply(task_id=task_id, site=self.name, round=round_,
                                           error_type=kind, message=str(exc)))

    def _protocol_reply(self, task: Task, aux: dict[str, Parameters], start: float,
                        **fields: Any) -> Update:
        return Update(task_id=task.task_id, site=self.name, round=task.round,
                      kind=UpdateKind.DELTA, parameters=Parameters({}), aux=aux,
                      provenance=(f"secure:{task.kind.value}",),
                      seconds=time.perf_counter() - start, **fields)

    def run(self, task: Task) -> Update:
        """Check the task against the site's policy, run it (:meth:`_run`), and keep at the
        site what the policy does not release."""
        if self.release is None:
            return self._run(task)
        self.release.admit(task)
        return self.release.release(task, self._run(task))

    def _run(self, task: Task) -> Update:
        """Check the task against the approved study, charge the site's privacy ledger,
        train, then pass the update through the site's chain of filters (engine.filters)."""
        start = time.perf_counter()
        if task.strategy != self.strategy:  # checked first: nothing is charged or computed
            raise ProtocolError(f"the task asks for strategy {task.strategy!r} but the study "
                                f"this site approved uses {self.strategy!r}; refusing it")
        if task.kind is TaskKind.STATS:
            in_sum = self._check_stats(task)
            if self.privacy is not None:  # before the data is touched, as for training
                self.privacy.charge(task, task.train)
            return self._stats(task, start, in_sum)
        if task.kind is TaskKind.LOCAL_BASELINE:
            return self._local_baseline(task, start)
        if task.kind.is_protocol_step:
            if self.secure is None:
                raise ProtocolError("this site's study does not use secure aggregation")
            return self._protocol_reply(task, self.secure.step(task), start, num_examples=0)
        again = self._check(task)
        if again is not None:  # the round's protocol restarted: no training, no charge
            return replace(again, seconds=time.perf_counter() - start)
        if self.privacy is not None:  # a valid task only: the ledger is charged, then data used
            self.privacy.charge(task, task.train)
        update = self._train(task)
        if task.kind is TaskKind.FIT:
            ctx = FilterContext(task)
            for f in self.chain:
                update = f(update, ctx)
        return replace(update, seconds=time.perf_counter() - start)

    def _check(self, task: Task) -> Update | None:
        """Refuse a fit or evaluation task the approved study does not allow, before anything
        is charged or computed; a secure fit of a round this site already entered returns
        the stored entry's reply for the new protocol attempt."""
        if task.kind is TaskKind.FIT and (self.secure is not None) != bool(
                task.meta.get("secure")):
            raise ProtocolError(
                "the approved study protects updates with secure aggregation but the task "
                "asks for a plain update" if self.secure is not None else
                "the task asks for secure aggregation but the approved study does not use it")
        if self.secure is not None and task.kind is TaskKind.FIT:
            self.secure.check(task)
            assert self._secure_step is not None
            again = self._secure_step.again(task)
            if again is not None:
                return again
        if self.privacy is not None:
            self.privacy.check(task)
        return None

    def _train(self, task: Task) -> Update:
        """Evaluate the incoming model if asked, then (a fit) train: the update as trained,
        before any filter."""
        d = self._normalized(task.aux.get(NORMALIZER))
        eval_metrics: dict[str, float] = {}
        if task.evaluate and len(d.x_test):
            eval_metrics = self.learner.evaluate(task.parameters, d.x_test, d.y_test)
        if task.kind is TaskKind.EVALUATE:
            return Update(task_id=task.task_id, site=self.name, round=task.round,
                          kind=UpdateKind.FULL, parameters=Parameters({}), num_examples=0,
                          eval_metrics=eval_metrics, num_eval_examples=len(d.x_test),
                          provenance=(f"evaluate:{self.learner.name}",) + (
                              (TEST_SPLIT_NOTE + d.test_split,) if d.test_split else ()))
        algo = self.algorithm
        state = self.state.load_before(task.round)
        task_aux = {k: v for k, v in task.aux.items() if k != NORMALIZER}
        result = self.learner.fit(
            task.parameters, d.x_train, d.y_train, task.train,
            seed=site_round_seed(task.seed, task.round, self.site_index),
            correction=algo.correction(task_aux, state))
        aux, new_state = algo.after_fit(task.parameters, task_aux, result, task.train, state)
        if new_state:
            self.state.save(task.round, new_state)
        facts = result.dp.to_metrics() if result.dp is not None else {}
        return Update(
            task_id=task.task_id, site=self.name, round=task.round, kind=UpdateKind.FULL,
            parameters=result.parameters, num_examples=result.num_examples,
            metrics={**result.metrics, **facts, "steps": float(result.num_steps)},
            eval_metrics=eval_metrics, num_eval_examples=len(d.x_test) if eval_metrics else 0,
            aux=aux, provenance=(f"fit:{self.learner.name}", f"strategy:{self.strategy}"))
