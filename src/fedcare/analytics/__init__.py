"""Hub-side analytics on disclosure-controlled site summaries (no row ever reaches the hub)."""

from __future__ import annotations
