"""Tasks (hub -> site) and updates (site -> hub).

These frozen dataclasses are the only things that travel between the round engine and a
site, whichever transport carries them (in-memory for simulation, HTTPS for deployment).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from fedcare.core.errors import ValidationError
from fedcare.core.limits import (
    AUGMENTATIONS,
    LR_SCHEDULES,
    MAX_AUGMENT_SHIFT,
    MAX_BATCH_SIZE,
    MAX_LOCAL_EPOCHS,
    MAX_LOCAL_STEPS,
    MAX_LR,
    MAX_PROXIMAL_MU,
    MAX_WEIGHT_DECAY,
    OPTIMIZERS,
    check_float,
    check_int,
)
from fedcare.core.params import Parameters


class UpdateKind(enum.StrEnum):
    """Whether an update carries full model weights or a difference to the global model."""

    FULL = "full"
    DELTA = "delta"


class TaskKind(enum.StrEnum):
    """What a task asks: train (and maybe evaluate), evaluate only, feature statistics, or one
    later step of a secure-aggregation protocol for the round's fit (exchange keys, send
    masked input, unmask; decrypt a homomorphically summed aggregate); or, after the rounds,
    train the task's model alone on the site's own rows and report only its held-out
    metrics (the local-only baseline; the model it trains never leaves the site)."""

    FIT = "fit"
    EVALUATE = "evaluate"
    STATS = "stats"
    SECAGG_SHARE = "sa_share"
    SECAGG_MASK = "sa_mask"
    SECAGG_UNMASK = "sa_unmask"
    HE_DECRYPT = "he_decrypt"
    LOCAL_BASELINE = "local_baseline"

    @property
    def is_protocol_step(self) -> bool:
        """A follow-up step of a round's fit: carries protocol messages, not the model."""
        return self in _PROTOCOL_STEPS


_PROTOCOL_STEPS = frozenset({TaskKind.SECAGG_SHARE, TaskKind.SECAGG_MASK,
                             TaskKind.SECAGG_UNMASK, TaskKind.HE_DECRYPT})
_ATTEMPT = re.compile(r"^(?P<head>.*/r\d+)/a(?P<attempt>\d+)(?P<tail>/[^/]+/[^/]+)$")


def task_id(study: str, round_: int, kind: TaskKind | str, site: str, attempt: int = 1) -> str:
    """The deterministic id of a task: ``study/r{round}/{kind}/{site}``.

    A secure round whose protocol a restarted hub runs again gets ``/a{attempt}`` after the
    round (``study/r{round}/a{attempt}/{kind}/{site}``, attempt >= 2): its tasks are new ones,
    so a reply to the earlier attempt can never be taken for one to the new attempt."""
    kind = TaskKind(kind).value
    if attempt == 1:
        return f"{study}/r{round_}/{kind}/{site}"
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        raise ValidationError(f"a protocol attempt is an integer >= 1, got {attempt!r}")
    return f"{study}/r{round_}/a{attempt}/{kind}/{site}"


def task_attempt(task_id_: str) -> int:
    """The protocol attempt a task id names (1 when it names none)."""
    m = _ATTEMPT.match(task_id_)
    return int(m["attempt"]) if m else 1


def first_attempt_id(task_id_: str) -> str:
    """The id the same task has in attempt 1: what a site's privacy ledger records, so that
    every attempt at a round's protocol is one task to the ledger (charged once)."""
    m = _ATTEMPT.match(task_id_)
    return f"{m['head']}{m['tail']}" if m else task_id_


@dataclass(frozen=True)
class TrainConfig:
    """How a site trains locally this round.

    ``local_steps`` > 0 overrides ``local_epochs`` (a fixed number of mini-batch steps, the
    usual way to equalise work between sites of very different sizes).

    ``lr_schedule`` shapes the learning rate over one fit's steps (``cosine``: from ``lr``
    down to 0 along half a cosine, restarting every round); ``augment`` (images only)
    mirrors and/or shifts each training batch's images, drawn from the fit's seed. Both are
    left out of :meth:`to_json` at their defaults, so tasks of studies that do not use them
    are byte-for-byte what they were before the options existed.
    """

    local_epochs: int = 1
    local_steps: int = 0
    batch_size: int = 32
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    proximal_mu: float = 0.0
    lr_schedule: str = "constant"
    augment: str = "none"
    augment_shift: int = 2

    def __post_init__(self) -> None:
        """Type and range of every field (bounds in :mod:`fedcare.core.limits`): a task's
        ``train`` header comes from the hub, and ``lr = inf`` or ``local_epochs = 10**9``
        must be refused here, not trained on (audit F21)."""
        problems = []
        ints = {"local_epochs": MAX_LOCAL_EPOCHS, "local_steps": MAX_LOCAL_STEPS,
                "batch_size": MAX_BATCH_SIZE, "augment_shift": MAX_AUGMENT_SHIFT}
        for name, top in ints.items():
            try:
                check_int(getattr(self, name), name,
                          1 if name in ("batch_size", "augment_shift") else 0, top)
            except ValueError as exc:
                problems.append(str(exc))
        floats = {"lr": (0.0, MAX_LR, True, False), "momentum": (0.0, 1.0, False, True),
                  "weight_decay": (0.0, MAX_WEIGHT_DECAY, False, False),
                  "proximal_mu": (0.0, MAX_PROXIMAL_MU, False, False)}
        for name, (low, high, low_open, high_open) in floats.items():
            try:
                object.__setattr__(self, name, check_float(
                    getattr(self, name), name, low, high, low_open=low_open,
                    high_open=high_open))
            except ValueError as exc:
                problems.append(str(exc))
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {', '.join(OPTIMIZERS)}, "
                            f"got {self.optimizer!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                            f"got {self.lr_schedule!r}")
        if self.augment not in AUGMENTATIONS:
            problems.append(f"augment must be one of {', '.join(AUGMENTATIONS)}, "
                            f"got {self.augment!r}")
        if not problems and self.local_epochs == 0 and self.local_steps == 0:
            problems.append("one of local_epochs or local_steps must be > 0")
        if problems:
            raise ValidationError("invalid training config: " + "; ".join(problems))

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in _LATER_KEYS or getattr(self, f.name) != f.default}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValidationError(f"unknown training config keys {sorted(unknown)}")
        return cls(**{str(k): v for k, v in data.items()})


#: TrainConfig keys added after the wire format was fixed: sent only when not at their default.
_LATER_KEYS = frozenset({"lr_schedule", "augment", "augment_shift"})


@dataclass(frozen=True)
class Task:
    """What one site must do in one round.

    ``aux`` carries strategy-specific arrays that travel with the model (e.g. SCAFFOLD's
    server control variate), keyed by a short name.
    """

    task_id: str
    study: str
    round: int
    site: str
    kind: TaskKind
    parameters: Parameters
    train: TrainConfig = field(default_factory=TrainConfig)
    aux: Mapping[str, Parameters] = field(default_factory=dict)
    seed: int = 0
    evaluate: bool = True
    strategy: str = "fedavg"
    #: Small JSON-able protocol facts (e.g. a secure-aggregation round's participants).
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Update:
    """A site's answer to a :class:`Task`.

    ``metrics`` hold numbers only (losses, accuracies) and ``provenance`` records what
    produced the update (learner, filters applied), for the audit trail.
    """

    task_id: str
    site: str
    round: int
    kind: UpdateKind
    parameters: Parameters
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    eval_metrics: Mapping[str, float] = field(default_factory=dict)
    num_eval_examples: int = 0
    aux: Mapping[str, Parameters] = field(default_factory=dict)
    provenance: tuple[str, ...] = ()
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.num_examples < 0:
            raise ValidationError("num_examples must be >= 0", site=self.site)


@dataclass(frozen=True)
class ErrorReply:
    """A site could not do its task. Errors crossing a process boundary are data, not traces."""

    task_id: str
    site: str
    round: int
    error_type: str
    message: str
