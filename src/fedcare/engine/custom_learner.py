"""A study's own model module as a :class:`~fedcare.core.learning.Learner`, run only in the
sandbox.

Why here and not in :mod:`fedcare.learners`: the learner's one job is to call
:func:`fedcare.governance.sandbox.run_untrusted`, and the leaf packages (learners, governance)
do not import each other; the engine knows both. The module is never imported into a fedcare
process - not at the hub (which needs only the layout: one flat vector of
``model.params`` float64 weights whose initial values fedcare draws itself), not at a site,
not in a simulation. Each fit and each scoring is one sandboxed child that receives only
arrays and hands back only arrays (the contract, ``docs/governance.md`` "Custom study code"):

* ``fit(inputs)``: ``params`` (float64, (P,)), ``x`` (the site's training rows), ``y``,
  and 0-d arrays ``epochs``, ``steps``, ``batch_size``, ``lr``, ``momentum``,
  ``weight_decay``, ``mu`` (FedProx's proximal coefficient), ``seed``, ``outputs``; returns
  ``{"params": (P,) float}`` and optionally ``{"train_loss": float}``.
* ``scores(inputs)``: ``params``, ``x`` and ``outputs``; returns ``{"scores": (n, outputs)
  float}`` - logits (one column, the positive class's log-odds, for binary) or values
  (regression), as every learner's :meth:`scores`. fedcare computes the metrics itself
  (:func:`fedcare.learners.metrics.task_metrics`), so a module cannot report flattering
  numbers, and the test labels never enter the sandbox.

Every output is checked (names, shape, float dtype, finite values, the weight vector's
length); a failed run or a refused output raises :class:`StudyCodeError`, which a site turns
into an error reply naming the sandbox status. The code's own stderr (its traceback, which a
hostile module could fill with patient values) stays in the site's log and never reaches the
hub. Because the weights are plain float arrays, FedAvg/FedProx, the site's update filters
(DP clipping and noise), secure aggregation and the hub's checks run on them unchanged; a
strategy that must reach into each gradient step (SCAFFOLD) is refused at config time
(:attr:`~fedcare.learners.options.ModelCapabilities.site_half`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedcare.core.dataset import TaskType
from fedcare.core.errors import ConfigError, DataError, FedcareError
from fedcare.core.learning import FitResult
from fedcare.core.limits import MAX_METRIC
from fedcare.core.messages import TrainConfig
from fedcare.core.params import Parameters
from fedcare.governance.sandbox import Limits, SandboxResult, run_untrusted
from fedcare.learners.metrics import task_metrics
from fedcare.learners.options import CustomOptions

log = logging.getLogger(__name__)

#: The one weight array of a custom model.
PARAMS = "params"
_FIT_OUTPUTS = frozenset({PARAMS, "train_loss"})
#: Processes (and threads) one run may have: the interpreter plus numpy's helpers.
_PROCESSES = 8


class StudyCodeError(FedcareError):
    """The study's own code failed in the sandbox, or returned something fedcare refuses."""


@dataclass(frozen=True)
class CodeRun:
    """One sandboxed run of a study's code, as a site's audit trail records it (no data, no
    stderr: only what happened)."""

    op: str
    #: The sandbox status (``ok``, ``timeout``, ``memory_limit``, ...) or ``refused_output``
    #: when the run ended well but fedcare refused what it returned.
    status: str
    reason: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"


#: Called after every run (a node writes an audit entry for each failed one).
RunObserver = Callable[[CodeRun], None]


@dataclass(frozen=True)
class SiteCodeSettings:
    """What the site (never the study) decides about running a study's code.

    ``allow_weaker``: run in the sandbox's weaker mode when the node is not root (a user and
    network namespace and Landlock, but no own uid and no private root: see
    :mod:`fedcare.governance.sandbox`); without it such a node refuses the code (status
    ``unavailable``). ``on_run``: told of every run."""

    allow_weaker: bool = False
    on_run: RunObserver | None = None


class CustomCodeLearner:
    """Runs the study's ``fit`` and ``scores`` in the sandbox; see the module docstring."""

    def __init__(self, options: CustomOptions, input_shape: tuple[int, ...], task: TaskType,
                 num_outputs: int, seed: int = 0, *,
                 site: SiteCodeSettings | None = None) -> None:
        if options.source is None:
            raise ConfigError(options.unresolved() or "model 'custom' has no source")
        self.name: str = options.name
        self.task = TaskType(task)
        self.input_shape = tuple(input_shape)
        self.num_outputs = int(num_outputs)
        self._source = options.source
        self._limits = Limits(cpu_seconds=options.cpu_seconds,
                              wall_seconds=float(options.wall_seconds),
                              memory_bytes=options.memory_mb << 20, processes=_PROCESSES)
        self._site = site if site is not None else SiteCodeSettings()
        size = options.params
        rng = np.random.default_rng(seed)
        start = (rng.normal(0.0, options.init_std, size) if options.init_std > 0
                 else np.zeros(size))
        self._initial = Parameters({PARAMS: start.astype(np.float64)})
        self._spec = self._initial.spec

    def initial_parameters(self) -> Parameters:
        return self._initial

    # -- the learner interface -------------------------------------------------------------
    def fit(self, parameters: Parameters, x: np.ndarray, y: np.ndarray, config: TrainConfig,
            *, seed: int, correction: Parameters | None = None) -> FitResult:
        if correction is not None:
            raise ConfigError("model 'custom' cannot apply a gradient correction (SCAFFOLD); "
                              "use FedAvg, FedProx or a FedOpt strategy")
        self._spec.validate(parameters, what=f"parameters for model {self.name!r}")
        n = len(x)
        if n == 0:
            raise DataError("cannot train on zero rows")
        inputs: dict[str, Any] = {
            PARAMS: self._flat(parameters), "x": np.asarray(x), "y": np.asarray(y),
            "epochs": np.int64(config.local_epochs), "steps": np.int64(config.local_steps),
            "batch_size": np.int64(config.batch_size), "lr": np.float64(config.lr),
            "momentum": np.float64(config.momentum),
            "weight_decay": np.float64(config.weight_decay),
            "mu": np.float64(config.proximal_mu), "seed": np.int64(seed % 2**63),
            "outputs": np.int64(self.num_outputs)}
        outputs = self._run("fit", inputs)
        extra = sorted(set(outputs) - _FIT_OUTPUTS)
        problem = (f"fit() returned unexpected arrays {extra} (allowed: params, train_loss)"
                   if extra else self._params_problem(outputs.get(PARAMS)))
        loss = outputs.get("train_loss")
        if problem is None and loss is not None:
            problem = _scalar_problem(loss, "train_loss")
        self._refuse_if("fit", problem)
        metrics = {} if loss is None else {"train_loss": float(np.asarray(loss).reshape(()))}
        steps = config.local_steps or config.local_epochs * math.ceil(n / config.batch_size)
        params = Parameters({PARAMS: np.asarray(outputs[PARAMS], np.float64).copy()})
        return FitResult(params, num_examples=n, num_steps=max(steps, 1), metrics=metrics)

    def evaluate(self, parameters: Parameters, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        if len(x) == 0:
            return {}
        return task_metrics(self.task, self.scores(parameters, x), np.asarray(y))

    def scores(self, parameters: Parameters, x: np.ndarray) -> np.ndarray:
        self._spec.validate(parameters, what=f"parameters for model {self.name!r}")
        n = len(x)
        if n == 0:
            return np.zeros((0, self.num_outputs))
        outputs = self._run("scores", {PARAMS: self._flat(parameters), "x": np.asarray(x),
                                       "outputs": np.int64(self.num_outputs)})
        got = outputs.get("scores")
        problem = None
        if set(outputs) != {"scores"}:
            problem = f"scores() must return exactly {{'scores': array}}, got {sorted(outputs)}"
        elif got is None or got.dtype.kind != "f":
            problem = "scores() must return a float array"
        elif got.shape not in ((n, self.num_outputs),) + (((n,),) if self.num_outputs == 1
                                                            else ()):
            problem = (f"scores() returned shape {got.shape}, expected ({n}, "
                       f"{self.num_outputs})")
        elif not np.isfinite(got).all():
            problem = "scores() returned NaN or infinite values"
        self._refuse_if("scores", problem)
        assert got is not None
        return np.asarray(got, np.float64).reshape(n, self.num_outputs)

    # -- running and checking --------------------------------------------------------------
    def _flat(self, parameters: Parameters) -> np.ndarray:
        return np.asarray(parameters[PARAMS], np.float64)

    def _run(self, op: str, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        result: SandboxResult = run_untrusted(self._source, inputs, limits=self._limits,
                                              entry=op, allow_weaker=self._site.allow_weaker)
        if not result.ok:
            # The code's stderr may hold anything it chose to print: the site's log only.
            log.warning("study code %s() failed in the sandbox: %s: %s\n%s", op,
                        result.status.value, result.reason, result.stderr[-2000:])
            self._observe(CodeRun(op, result.status.value, result.reason, result.seconds))
            reason = result.reason.replace(" (see stderr)", "")
            raise StudyCodeError(f"the study's code failed in the sandbox: {op}() ended with "
                                 f"status {result.status.value}: {reason} (its own output, "
                                 "e.g. a traceback, stays in the site's log; `fedcare "
                                 "simulate` shows it)")
        self._observe(CodeRun(op, "ok", result.reason, result.seconds))
        return dict(result.outputs)

    def _refuse_if(self, op: str, problem: str | None) -> None:
        if problem is None:
            return
        self._observe(CodeRun(op, "refused_output", problem, 0.0))
        raise StudyCodeError(f"the study's code ran ({op}(), sandbox status ok) but fedcare "
                             f"refuses its output (refused_output): {problem}")

    def _observe(self, run: CodeRun) -> None:
        if self._site.on_run is not None:
            self._site.on_run(run)

    def _params_problem(self, params: np.ndarray | None) -> str | None:
        size = self._spec[PARAMS].shape[0]
        if params is None:
            return "fit() returned no 'params'"
        if params.dtype.kind != "f":
            return f"fit() returned params of dtype {params.dtype}, expected a float array"
        if params.shape != (size,):
            return f"fit() returned params of shape {params.shape}, expected ({size},)"
        if not np.isfinite(params).all():
            return "fit() returned NaN or infinite params"
        if np.abs(params).max(initial=0.0) > MAX_METRIC:
            return f"fit() returned params larger than {MAX_METRIC:g}"
        return None


def _scalar_problem(value: np.ndarray, name: str) -> str | None:
    if value.size != 1 or value.dtype.kind not in "fiu":
        return f"{name} must be one number"
    if not np.isfinite(value).all() or abs(float(value.reshape(()))) > MAX_METRIC:
        return f"{name} must be finite and at most {MAX_METRIC:g}"
    return None
