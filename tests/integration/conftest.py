"""Fixtures shared by the integration tests."""

from __future__ import annotations

from tests.integration.pg import pg_server

__all__ = ["pg_server"]
