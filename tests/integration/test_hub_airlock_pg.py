"""The airlock's final states and immutable decisions (migration 0009's triggers) on
PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.pg import PgServer
from tests.unit.test_hub_airlock import ExportStoreContract


class TestPostgresExports(ExportStoreContract):
    @pytest.fixture
    def db_url(self, pg_server: PgServer) -> Iterator[str]:
        url = pg_server.create_database()
        yield url
        pg_server.drop_database(url)
