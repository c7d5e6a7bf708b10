"""Fixtures of the dashboard's tests: a gateway with an admin key, on SQLite or PostgreSQL.

``backend`` is ``sqlite`` by default; tests that parametrize ``backend`` run on both (PostgreSQL at
127.0.0.1:5432, database ``test``, one schema per test, dropped at the end; skipped loudly when the
server is not reachable).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from dashboard_kit import KEYS

from respan_gateway.testing import GatewayServer
from respan_gateway.testing.pytest_plugin import PG_URL

_IDS = itertools.count(1)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """``sqlite``; a test marked ``@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)`` runs on both."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def dashboard_gateway(backend: str, tmp_path: Any, request: pytest.FixtureRequest,
                      gateway_factory: Callable[..., GatewayServer]) -> Callable[..., GatewayServer]:
    """``start(extra_toml="")``: a gateway with the dashboard, logging on ``backend`` and admin keys."""

    def start(extra: str = "") -> GatewayServer:
        if backend == "sqlite":
            database = f'url = "sqlite:///{tmp_path}/respan.sqlite3"'
        else:
            database = f'url = "{PG_URL}"\nschema = "{request.getfixturevalue("postgres_schema")}_dash{next(_IDS)}"\npool_size = 4'
        toml = f'\n[database]\n{database}\n\n[logging]\nflush_interval = 0.05\nspill_dir = "{tmp_path}/spill"\n{extra}'
        return gateway_factory(toml, keys=KEYS)

    return start
