"""Shared test settings: one torch thread (2-core CI), quiet hypothesis deadlines."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

os.environ.setdefault("OMP_NUM_THREADS", "1")
settings.register_profile("ci", deadline=None, max_examples=60)
settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test trains with one torch thread (2-core CI, -n 2), restoring the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
