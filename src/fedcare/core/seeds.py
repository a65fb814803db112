"""Deterministic seeds for every random choice in a study.

Every site-round gets its own seed derived from the study seed, so a run is reproducible,
a resumed run equals an uninterrupted one, and the result does not depend on whether sites
ran one after another or in parallel worker processes.
"""

from __future__ import annotations

import numpy as np


def site_round_seed(study_seed: int, round_: int, site_index: int) -> int:
    """Seed of site ``site_index``'s local training in round ``round_`` (1-based)."""
    state = np.random.SeedSequence([study_seed, round_, site_index]).generate_state(1, np.uint64)
    return int(state[0])


def round_seed(study_seed: int, round_: int) -> int:
    """Seed of the hub's random choices in a round (e.g. which sites are sampled)."""
    return site_round_seed(study_seed, round_, 2**31 - 1)
