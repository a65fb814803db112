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
from safetensors import safe_open
from safetensors.numpy import save as st_save

from fedcare.core.errors import FedcareError
from fedcare.core.params import Parameters
from fedcare.engine.history import History, atomic_write_bytes

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
        meta = {"history": history.to_dict()}
        tensors = {f"p/{k}": np.require(v, requirements='C') for k, v in parameters.items()}
        tensors.update({f"s/{k}": np.require(v, requirements="C")
                        for k, v in strategy_state.items()})
        header = {"round": str(round_), "order": json.dumps(list(parameters)),
                  "meta": json.dumps(meta)}
        path = self.path(round_)
        atomic_write_bytes(path, st_save(tensors, metadata=header))
        return path

    def rounds(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.folder.iterdir() if (m := _NAME.match(p.name)))

    def load(self, round_: int) -> Checkpoint:
        path = self.path(round_)
        try:
            with safe_open(str(path), framework="np") as fh:
                header = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
            order = json.loads(header["order"])
            params = Parameters({k: tensors[f"p/{k}"] for k in order})
            state = {k[2:]: v for k, v in tensors.items() if k.startswith("s/")}
            return Checkpoint(int(header["round"]), params, state, json.loads(header["meta"]))
        except (OSError, KeyError, ValueError) as exc:
            raise FedcareError(f"checkpoint {path} is unreadable: {exc}") from exc

    def latest(self) -> Checkpoint | None:
        rounds = self.rounds()
        return self.load(rounds[-1]) if rounds else None

