"""Per-site persistent state (e.g. SCAFFOLD's control variate), stored at the site.

State is saved per round (``round_0007.safetensors``), atomically, and the executor loads the
newest state *older than the task's round*. So a hub that crashes and replays round 7 gets the
same answer from the site as the first time, and a resumed study equals an uninterrupted one.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from safetensors.numpy import save as st_save

from fedcare.core.files import atomic_write

_NAME = re.compile(r"round_(\d{6})\.safetensors$")
KEEP = 3


class SiteStateStore:
    """Round-indexed state for one site; in memory when no folder is given."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self._memory: dict[int, dict[str, np.ndarray]] = {}

    def _rounds_on_disk(self) -> list[int]:
        assert self.folder is not None
        if not self.folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.folder.iterdir()
                      if (m := _NAME.search(p.name)))

    def load_before(self, round_: int) -> dict[str, np.ndarray]:
        """The newest state saved for a round strictly before ``round_`` (empty if none)."""
        if self.folder is None:
            older = [r for r in self._memory if r < round_]
            return dict(self._memory[max(older)]) if older else {}
        older = [r for r in self._rounds_on_disk() if r < round_]
        if not older:
            return {}
        return load_file(str(self.folder / f"round_{max(older):06d}.safetensors"))

    def save(self, round_: int, state: dict[str, np.ndarray]) -> None:
        if self.folder is None:
            self._memory[round_] = state
            for r in sorted(self._memory)[:-KEEP]:
                del self._memory[r]
            return
        atomic_write(self.folder / f"round_{round_:06d}.safetensors",
                     st_save({k: np.require(v, requirements="C") for k, v in state.items()}))
        for r in self._rounds_on_disk()[:-KEEP]:
            (self.folder / f"round_{r:06d}.safetensors").unlink(missing_ok=True)
