"""Per-round checkpoints: the global model, the strategy's state and the history so far.

One record (:class:`Checkpoint`) and one protocol (:class:`CheckpointSink`) for every place a
study's state is kept - the simulation's files (:class:`CheckpointStore`) and the hub's blobs
and database row (:class:`fedcare.hub.checkpoints.BlobCheckpoints`) - and one restore path,
:meth:`fedcare.engine.round_engine.RoundEngine.resume`.

The file store writes one safetensors file per round, atomically, so the newest complete file
is always a consistent point to resume from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fedcare.core.errors import FedcareError, ValidationError
from fedcare.core.files import atomic_write
from fedcare.core.params import Parameters
from fedcare.core.wire import load_parameters, save_parameters
from fedcare.engine.history import History

_NAME = re.compile(r"^round_(\d{5})\.safetensors$")


@dataclass(frozen=True)
class Checkpoint:
    """A study's state after round ``round``: what a resumed engine starts from."""

    round: int
    parameters: Parameters
    strategy_state: dict[str, np.ndarray]
    history: History


class CheckpointSink(Protocol):
    """Where a study's state goes after each round, and where a resume reads it back."""

    def save(self, round_: int, parameters: Parameters, strategy_state: Mapping[str, Any],
             history: History) -> object: ...

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint (None: nothing saved yet)."""
        ...


class CheckpointStore:
    """Checkpoints as files in ``folder``: the history so far travels in the file's metadata."""

    def __init__(self, folder: Path, every: int = 1) -> None:
        """``every``: save after every N-th round only (0: never; :meth:`latest` still reads
        what an earlier run saved)."""
        self.folder = folder
        self.every = every

    def path(self, round_: int) -> Path:
        return self.folder / f"round_{round_:05d}.safetensors"

    def save(self, round_: int, parameters: Parameters, strategy_state: Mapping[str, np.ndarray],
             history: History) -> Path | None:
        """Save the state after ``round_`` (when it is an N-th round); the file's path."""
        if not self.every or round_ % self.every:
            return None
        path = self.path(round_)
        atomic_write(path, save_parameters(parameters, extra=strategy_state, metadata={
            "round": str(round_), "meta": json.dumps({"history": history.to_dict()})}))
        return path

    def rounds(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.folder.iterdir() if (m := _NAME.match(p.name)))

    def load(self, round_: int) -> Checkpoint:
        path = self.path(round_)
        try:
            stored = load_parameters(path.read_bytes())
            meta = stored.metadata
            history = History.from_dict(json.loads(meta["meta"])["history"])
            return Checkpoint(int(meta["round"]), stored.parameters, stored.extra, history)
        except (OSError, KeyError, TypeError, ValueError, ValidationError) as exc:
            raise FedcareError(f"checkpoint {path} is unreadable: {exc}") from exc

    def latest(self) -> Checkpoint | None:
        rounds = self.rounds()
        return self.load(rounds[-1]) if rounds else None
