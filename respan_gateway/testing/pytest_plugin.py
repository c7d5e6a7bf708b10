"""Pytest fixtures for testing the gateway and its plugins (``-p respan_gateway.testing.pytest_plugin``).

- ``fake_upstream``: one :class:`FakeUpstream` for the session, reset before each test that uses it.
- ``gateway_factory(extra_toml="", plugins=(), config=None, keys="")``: a :class:`GatewayServer` on
  the test config (see :func:`test_config`) plus ``extra_toml`` (or on ``config``, a whole TOML
  text); stopped after the test.
- ``gateway``: the gateway on the plain test config.
- ``postgres_schema``: a schema-name prefix for this test run on the PostgreSQL at ``PG_URL``
  (append a unique suffix per test); every schema with that prefix is dropped at the end. Skips,
  loudly, when the server is not reachable.
- ``redis_state``: a ``[state]`` section (TOML text) on the Redis at ``REDIS_URL`` with a key prefix of
  its own (so tests never see each other's keys); every key under it is deleted after the test. Has
  ``.url``, ``.prefix`` and ``.client()`` (a sync redis client, to inspect or to flush). Skips, loudly,
  when Redis is not reachable. ``module_redis_state``: the same, one for every test of a module.
"""

from __future__ import annotations

import asyncio
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .fake_upstream import FakeUpstream
from .gateway_server import GatewayServer, test_config

#: The PostgreSQL of the shared-mode tests (trust auth, database ``test``).
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
#: The Redis of the shared-mode tests.
REDIS_URL = "redis://127.0.0.1:6379/0"


class RedisState(str):
    """The ``[state]`` TOML section of one test (a str, to append to a config), and its key prefix."""

    url: str
    prefix: str

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=3)

    def keys(self) -> list[bytes]:
        with self.client() as r:
            return list(r.scan_iter(match=self.prefix + "*", count=1000))

    def flush(self) -> None:
        with self.client() as r:
            for key in list(r.scan_iter(match=self.prefix + "*", count=1000)):
                r.delete(key)


def _redis_state() -> Iterator[RedisState]:
    import redis

    try:
        with redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2) as r:
            r.ping()
    except Exception as exc:  # noqa: BLE001
        message = f"Redis on 127.0.0.1:6379 is not reachable ({type(exc).__name__}: {exc}): its tests are SKIPPED"
        warnings.warn(message)
        pytest.skip(message)
    prefix = f"respan-test-{uuid.uuid4().hex[:10]}:"
    state = RedisState(f'\n[state]\nredis_url = "{REDIS_URL}"\nkey_prefix = "{prefix}"\n')
    state.url, state.prefix = REDIS_URL, prefix
    yield state
    try:
        state.flush()
    except Exception:  # noqa: BLE001
        pass


@pytest.fixture
def redis_state() -> Iterator[RedisState]:
    yield from _redis_state()


@pytest.fixture(scope="module")
def module_redis_state() -> Iterator[RedisState]:
    """``redis_state`` for every test of a module (e.g. for gateway processes the module shares)."""
    yield from _redis_state()


def _pg(sql: str) -> Any:
    import asyncpg

    async def run() -> Any:
        conn = await asyncpg.connect(PG_URL, timeout=3)
        try:
            return await conn.fetch(sql)
        finally:
            await conn.close()

    return asyncio.run(run())


@pytest.fixture(scope="session")
def postgres_schema() -> Iterator[str]:
    try:
        _pg("SELECT 1")
    except Exception as exc:  # noqa: BLE001
        message = f"PostgreSQL on 127.0.0.1:5432 is not reachable ({type(exc).__name__}: {exc}): its tests are SKIPPED"
        warnings.warn(message)
        pytest.skip(message)
    prefix = f"respan_test_{uuid.uuid4().hex[:10]}"
    yield prefix
    try:
        for row in _pg(f"SELECT nspname FROM pg_namespace WHERE nspname LIKE '{prefix}%'"):
            _pg(f'DROP SCHEMA IF EXISTS "{row["nspname"]}" CASCADE')
    except Exception:  # noqa: BLE001
        pass


@pytest.fixture(scope="session")
def _session_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
def fake_upstream(_session_upstream: FakeUpstream) -> FakeUpstream:
    _session_upstream.reset()
    return _session_upstream


@pytest.fixture
def gateway_factory(fake_upstream: FakeUpstream) -> Iterator[Callable[..., GatewayServer]]:
    started: list[GatewayServer] = []

    def start(extra_toml: str = "", plugins: tuple[Any, ...] = (), config: str | None = None, keys: str = "") -> GatewayServer:
        server = GatewayServer(config if config is not None else test_config(fake_upstream.url, extra_toml, keys=keys), plugins)
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def _session_gateway(_session_upstream: FakeUpstream) -> Iterator[GatewayServer]:
    with GatewayServer(test_config(_session_upstream.url)) as server:
        yield server


@pytest.fixture
def gateway(_session_gateway: GatewayServer, fake_upstream: FakeUpstream) -> GatewayServer:
    return _session_gateway
