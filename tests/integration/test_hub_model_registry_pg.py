"""The model registry's immutability (migration 0007's trigger) on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.pg import PgServer
from tests.unit.test_hub_model_registry import RegistryStoreContract


class TestPostgresRegistry(RegistryStoreContract):
    @pytest.fixture
    def db_url(self, pg_server: PgServer) -> Iterator[str]:
        url = pg_server.create_database()
        yield url
        pg_server.drop_database(url)
