"""Fixtures of the auth plugin's tests: the keys suite runs on SQLite and on PostgreSQL.

``keyed_gateway(ttl=..., database=None)`` starts a gateway whose database is ``backend``'s (one per
test: a SQLite file in the test's tmp dir, or a PostgreSQL schema of its own); a second call in the
same test shares that database, as two replicas do.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import httpx2
import pytest

from respan_gateway.testing import FakeUpstream, GatewayServer, test_config
from respan_gateway.testing.pytest_plugin import PG_URL

ADMIN_KEY = "sk-acme-admin-key"
OTHER_ADMIN_KEY = "sk-globex-admin-key"
KEYS = (f'{{ key = "{ADMIN_KEY}", tenant = "acme", name = "acme-ops", admin = true }}, '
        f'{{ key = "{OTHER_ADMIN_KEY}", tenant = "globex", name = "globex-ops", admin = true }}')
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


def auth_config(upstream: FakeUpstream, database: str, *, ttl: float = 10.0, keys: str = "", extra: str = "") -> str:
    """The test config with the admin keys (and ``keys``), ``[auth] key_cache_ttl = ttl`` and ``database``."""
    text = test_config(upstream.url, database + extra, keys=KEYS + (", " + keys if keys else ""))
    return text.replace("[auth]\n", f"[auth]\nkey_cache_ttl = {ttl}\n", 1)


@pytest.fixture
def keyed_gateway(database_toml: str, fake_upstream: FakeUpstream,
                  gateway_factory: Callable[..., GatewayServer]) -> Callable[..., GatewayServer]:
    def start(ttl: float = 10.0, extra: str = "", database: str | None = None, keys: str = "") -> GatewayServer:
        return gateway_factory(config=auth_config(fake_upstream, database or database_toml, ttl=ttl, keys=keys, extra=extra))

    return start


class KeysClient:
    """The keys API as an operator's script calls it."""

    def __init__(self, gateway: GatewayServer, key: str = ADMIN_KEY) -> None:
        self.url = gateway.url + "/api/keys/"
        self.headers = {"authorization": f"Bearer {key}"}

    def create(self, **body: Any) -> dict[str, Any]:
        r = httpx2.post(self.url, json=body, headers=self.headers, timeout=10)
        assert r.status_code == 201, r.text
        return r.json()

    def request(self, method: str, path: str = "", **kwargs: Any) -> httpx2.Response:
        return httpx2.request(method, self.url + path, headers=self.headers, timeout=10, **kwargs)


def me(gateway: GatewayServer, key: str) -> httpx2.Response:
    return httpx2.get(gateway.url + "/api/keys/me/", headers={"authorization": f"Bearer {key}"}, timeout=10)
