"""Pytest fixtures for testing the gateway and its plugins (``-p respan_gateway.testing.pytest_plugin``).

- ``fake_upstream``: one :class:`FakeUpstream` for the session, reset before each test that uses it.
- ``gateway_factory(extra_toml="", plugins=(), config=None, keys="")``: a :class:`GatewayServer` on
  the test config (see :func:`test_config`) plus ``extra_toml`` (or on ``config``, a whole TOML
  text); stopped after the test.
- ``gateway``: the gateway on the plain test config.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .fake_upstream import FakeUpstream
from .gateway_server import GatewayServer, test_config


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
