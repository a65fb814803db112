"""Shared test settings: one torch thread (2-core CI), quiet hypothesis deadlines."""

from __future__ import annotations

import os

from hypothesis import settings

os.environ.setdefault("OMP_NUM_THREADS", "1")
settings.register_profile("ci", deadline=None, max_examples=60)
settings.load_profile("ci")
