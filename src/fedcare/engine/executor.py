"""Site side: turn a task (bytes) into an update (bytes) with the site's learner and data.

This is the code a site node runs in deployment and what every simulated site runs: it decodes
and validates the task against the model the site expects, runs the strategy's site half,
trains, evaluates, and encodes the reply. Any failure becomes an :class:`ErrorReply` - errors
cross the boundary as data - so one broken site never takes the round down with it.
"""

from __future__ import annotations

import time
from pathlib import Path

from fedcare.core.errors import FedcareError
from fedcare.core.messages import ErrorReply, Task, TaskKind, Update, UpdateKind
from fedcare.core.params import Parameters, ParamSpec
from fedcare.core.seeds import site_round_seed
from fedcare.core.wire import decode_task, encode_error, encode_update
from fedcare.data.dataset import SiteData
from fedcare.engine.site_state import SiteStateStore
from fedcare.learners.base import Learner
from fedcare.strategies import site_algorithm


class SiteExecutor:
    """Executes tasks for one site."""

    def __init__(self, data: SiteData, learner: Learner, *, site_index: int,
                 expected: ParamSpec, state_dir: Path | None = None) -> None:
        self.data = data
        self.learner = learner
        self.site_index = site_index
        self.expected = expected
        self.state = SiteStateStore(state_dir)

    @property
    def name(self) -> str:
        return self.data.name

    def handle(self, payload: bytes) -> bytes:
        """Bytes in, bytes out: the transport-facing entry point."""
        task_id, round_ = "", -1
        try:
            task = decode_task(payload, self.expected)
            task_id, round_ = task.task_id, task.round
            if task.site != self.name:
                raise FedcareError(f"task addressed to {task.site!r} reached {self.name!r}")
            return encode_update(self.run(task))
        except Exception as exc:
            kind = type(exc).__name__ if isinstance(exc, FedcareError) else "InternalError"
            return encode_error(ErrorReply(task_id=task_id, site=self.name, round=round_,
                                           error_type=kind, message=str(exc)))

    def run(self, task: Task) -> Update:
        start = time.perf_counter()
        d = self.data
        eval_metrics: dict[str, float] = {}
        if task.evaluate and len(d.x_test):
            eval_metrics = self.learner.evaluate(task.parameters, d.x_test, d.y_test)
        if task.kind is TaskKind.EVALUATE:
            return Update(task_id=task.task_id, site=self.name, round=task.round,
                          kind=UpdateKind.FULL, parameters=Parameters({}), num_examples=0,
                          eval_metrics=eval_metrics, num_eval_examples=len(d.x_test),
                          provenance=(f"evaluate:{self.learner.name}",),
                          seconds=time.perf_counter() - start)
        algo = site_algorithm(task.strategy)
        state = self.state.load_before(task.round)
        result = self.learner.fit(
            task.parameters, d.x_train, d.y_train, task.train,
            seed=site_round_seed(task.seed, task.round, self.site_index),
            correction=algo.correction(task.aux, state))
        aux, new_state = algo.after_fit(task.parameters, task.aux, result, task.train, state)
        if new_state:
            self.state.save(task.round, new_state)
        return Update(
            task_id=task.task_id, site=self.name, round=task.round, kind=UpdateKind.FULL,
            parameters=result.parameters, num_examples=result.num_examples,
            metrics={**result.metrics, "steps": float(result.num_steps)},
            eval_metrics=eval_metrics, num_eval_examples=len(d.x_test) if eval_metrics else 0,
            aux=aux, provenance=(f"fit:{self.learner.name}", f"strategy:{task.strategy}"),
            seconds=time.perf_counter() - start)
