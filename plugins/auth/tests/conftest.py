"""Fixtures of the auth plugin's tests: the keys suite runs on SQLite and on PostgreSQL.

``keyed_gateway(ttl=..., extra="", database=None, keys="")`` starts a gateway with the admin keys of
keys_kit.py on ``backend``'s database (one per test: a SQLite file in the test's tmp dir, or a
PostgreSQL schema of its own, skipped loudly when the server is not reachable); a second call in
the same test shares that database, as two replicas do.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from keys_kit import auth_config

from respan_gateway.testing import FakeUpstream, GatewayServer
from respan_gateway.testing.pytest_plugin import PG_URL

_IDS = itertools.count(1)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def database_toml(backend: str, tmp_path: Any, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f'\n[database]\nurl = "sqlite:///{tmp_path}/respan.sqlite3"\n'
    schema = f"{request.getfixturevalue('postgres_schema')}_keys{next(_IDS)}"
    return f'\n[database]\nurl = "{PG_URL}"\nschema = "{schema}"\npool_size = 2\n'


@pytest.fixture
def keyed_gateway(database_toml: str, fake_upstream: FakeUpstream,
                  gateway_factory: Callable[..., GatewayServer]) -> Callable[..., GatewayServer]:
    def start(ttl: float = 10.0, extra: str = "", database: str | None = None, keys: str = "") -> GatewayServer:
        return gateway_factory(config=auth_config(fake_upstream, database or database_toml, ttl=ttl, keys=keys, extra=extra))

    return start
