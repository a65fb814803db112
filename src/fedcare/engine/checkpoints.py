"""Per-round checkpoints: the global model, the strategy's state and the history so far.

One safetensors file per round, written atomically, so the newest complete file is always a
consistent point to resume from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedcare.core.errors import FedcareError, ValidationError
from fedcare.core.files import atomic_write
from fedcare.core.params import Parameters
from fedcare.core.wire import load_parameters, save_parameters
from fedcare.engine.history import History

_NAME = re.compile(r"^round_(\d{5})\.safetensors$")


@dataclass(frozen=True)
class Checkpoint:
    round: int
    parameters: Parameters
    strategy_state: dict[str, np.ndarray]
    meta: dict[str, Any]


class CheckpointStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, round_: int) -> Path:
        return self.folder / f"round_{round_:05d}.safetensors"

    def save(self, round_: int, parameters: Parameters, strategy_state: Mapping[str, np.ndarray],
             history: History) -> Path:
        """Save the state after ``round_``; the history so far travels in the file's metadata."""
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
            return Checkpoint(int(meta["round"]), stored.parameters, stored.extra,
                              json.loads(meta["meta"]))
        except (OSError, KeyError, ValueError, ValidationError) as exc:
            raise FedcareError(f"checkpoint {path} is unreadable: {exc}") from exc

    def latest(self) -> Checkpoint | None:
        rounds = self.rounds()
        return self.load(rounds[-1]) if rounds else None

