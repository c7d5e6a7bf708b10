"""Fixtures of the logging plugin's tests: the same record suite runs on SQLite and on PostgreSQL.

``backend`` is parametrized: ``sqlite`` (a file in the test's tmp dir) and ``postgres`` (127.0.0.1:5432,
database ``test``, one schema per test run, dropped at the end). PostgreSQL tests skip, loudly, when
the server is not reachable.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from respan_gateway.testing import GatewayServer
from respan_gateway.testing.pytest_plugin import PG_URL

_SCHEMA_IDS = itertools.count(1)


def store_toml(backend: str, tmp_path: Any, request: pytest.FixtureRequest, **logging: Any) -> str:
    """The [database] and [logging] sections of a test config for ``backend``."""
    if backend == "sqlite":
        database = f'url = "sqlite:///{tmp_path}/respan.sqlite3"'
    else:
        # One schema per test: records of other tests never show up in a list.
        schema = f"{request.getfixturevalue('postgres_schema')}_{next(_SCHEMA_IDS)}"
        # A generous connect (and pool acquire) timeout: the server is shared, and busy under load.
        database = f'url = "{PG_URL}"\nschema = "{schema}"\npool_size = 4\nconnect_timeout = 30'
    # A generous write timeout: a batch that takes long on a busy machine is not an outage (a spilled
    # record is readable only once replayed). The outage tests set short ones of their own.
    settings = {"flush_interval": 0.05, "spill_dir": f"{tmp_path}/spill", "write_timeout": 30.0, **logging}
    lines = "\n".join(f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in settings.items())
    return f"\n[database]\n{database}\n\n[logging]\n{lines}\n"


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def logged_gateway(backend: str, tmp_path: Any, request: pytest.FixtureRequest,
                   gateway_factory: Callable[..., GatewayServer]) -> Callable[..., GatewayServer]:
    """``start(extra_toml="", **logging_settings)``: a gateway storing its records in ``backend``."""

    def start(extra: str = "", **logging: Any) -> GatewayServer:
        return gateway_factory(store_toml(backend, tmp_path, request, **logging) + extra)

    return start
