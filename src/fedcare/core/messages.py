"""Tasks (hub -> site) and updates (site -> hub).

These frozen dataclasses are the only things that travel between the round engine and a
site, whichever transport carries them (in-memory for simulation, HTTPS for deployment).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from fedcare.core.errors import ValidationError
from fedcare.core.limits import (
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
    masked input, unmask; decrypt a homomorphically summed aggregate)."""

    FIT = "fit"
    EVALUATE = "evaluate"
    STATS = "stats"
    SECAGG_SHARE = "sa_share"
    SECAGG_MASK = "sa_mask"
    SECAGG_UNMASK = "sa_unmask"
    HE_DECRYPT = "he_decrypt"

    @property
    def is_protocol_step(self) -> bool:
        """A follow-up step of a round's fit: carries protocol messages, not the model."""
        return self in _PROTOCOL_STEPS


_PROTOCOL_STEPS = frozenset({TaskKind.SECAGG_SHARE, TaskKind.SECAGG_MASK,
                             TaskKind.SECAGG_UNMASK, TaskKind.HE_DECRYPT})


@dataclass(frozen=True)
class TrainConfig:
    """How a site trains locally this round.

    ``local_steps`` > 0 overrides ``local_epochs`` (a fixed number of mini-batch steps, the
    usual way to equalise work between sites of very different sizes).
    """

    local_epochs: int = 1
    local_steps: int = 0
    batch_size: int = 32
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        """Type and range of every field (bounds in :mod:`fedcare.core.limits`): a task's
        ``train`` header comes from the hub, and ``lr = inf`` or ``local_epochs = 10**9``
        must be refused here, not trained on (audit F21)."""
        problems = []
        ints = {"local_epochs": MAX_LOCAL_EPOCHS, "local_steps": MAX_LOCAL_STEPS,
                "batch_size": MAX_BATCH_SIZE}
        for name, top in ints.items():
            try:
                check_int(getattr(self, name), name, 1 if name == "batch_size" else 0, top)
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
        if not problems and self.local_epochs == 0 and self.local_steps == 0:
            problems.append("one of local_epochs or local_steps must be > 0")
        if problems:
            raise ValidationError("invalid training config: " + "; ".join(problems))

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValidationError(f"unknown training config keys {sorted(unknown)}")
        return cls(**{str(k): v for k, v in data.items()})


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
