"""`[state]`: the one Redis client of a process, what plugins that share state across replicas use."""

from __future__ import annotations

import httpx2
import pytest
from starlette.responses import JSONResponse

from respan_gateway import ConfigError, hookimpl
from respan_gateway.state import UNAVAILABLE
from respan_gateway.testing import GatewayServer, test_config


class CounterPlugin:
    """A plugin that keeps a counter in the shared state, as the limits plugin does."""

    __name__ = "counter_plugin"

    @staticmethod
    @hookimpl
    def register_routes(register):  # noqa: ANN001
        async def bump(request):  # noqa: ANN001
            state = request.app.state.gateway.state
            if not state.shared:
                return JSONResponse({"shared": False})
            try:
                value = await state.redis.incrby(state.key("test", "counter"), 1)
            except UNAVAILABLE as exc:
                return JSONResponse({"unavailable": type(exc).__name__}, status_code=503)
            return JSONResponse({"shared": True, "value": value})

        register("/test/bump", bump, methods=["POST"])


def test_two_gateways_on_one_redis_share_a_counter(gateway_factory, redis_state) -> None:
    first = gateway_factory(redis_state, plugins=(CounterPlugin,))
    second = gateway_factory(redis_state, plugins=(CounterPlugin,))
    values = [httpx2.post(server.url + "/test/bump").json()["value"] for server in (first, second, first, second)]
    assert values == [1, 2, 3, 4]
    assert [k.decode() for k in redis_state.keys()] == [f"{redis_state.prefix}test:counter"]


def test_without_redis_url_nothing_is_shared(gateway_factory) -> None:
    server = gateway_factory(plugins=(CounterPlugin,))
    assert httpx2.post(server.url + "/test/bump").json() == {"shared": False}


def test_unreachable_redis_does_not_stop_the_start_and_fails_fast(gateway_factory) -> None:
    # Port 1 refuses at once: the gateway starts, and a command raises one of UNAVAILABLE.
    server = gateway_factory('[state]\nredis_url = "redis://127.0.0.1:1/0"\n', plugins=(CounterPlugin,))
    assert httpx2.get(server.url + "/healthz").status_code == 200
    response = httpx2.post(server.url + "/test/bump")
    assert response.status_code == 503
    assert response.json()["unavailable"] in {"ConnectionError", "TimeoutError"}


def test_a_bad_url_stops_the_start_by_name(fake_upstream) -> None:
    with pytest.raises(ConfigError, match=r"state\.redis_url.*redis://"):
        GatewayServer(test_config(fake_upstream.url, '[state]\nredis_url = "http://127.0.0.1:6379"\n'))


def test_the_password_in_the_url_is_a_secret(fake_upstream) -> None:
    from respan_gateway.log import redact_value

    server = GatewayServer(test_config(fake_upstream.url, '[state]\nredis_url = "redis://:hunter2-redis-pass@127.0.0.1:1/0"\n'))
    assert "hunter2-redis-pass" not in redact_value("AUTH said: bad password hunter2-redis-pass")
    assert "hunter2" not in str(server.gateway.state.describe())


_NO_REDIS_SCRIPT = """
import sys
import httpx2
from respan_gateway.testing import TEST_KEY, FakeUpstream, GatewayServer, test_config
with FakeUpstream() as upstream, GatewayServer(test_config(upstream.url)) as gateway:
    for _ in range(2):  # a miss, then a hit: the cache's memory store answers
        r = httpx2.post(gateway.base_url + "chat/completions", headers={"authorization": f"Bearer {TEST_KEY}"},
                        json={"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "cache_enabled": True},
                        timeout=30)
        assert r.status_code == 200, r.text
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("redis", "opentelemetry"))
print("RESULT", r.headers.get("x-respan-cache"), loaded)
"""


def test_without_redis_url_redis_is_never_imported() -> None:
    """redis costs an idle worker some 8 MB (it imports OpenTelemetry's SDK): a process without Redis
    serves, caches and limits without loading it. A fresh interpreter: this one has redis already."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _NO_REDIS_SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))
    assert result == "RESULT HIT []", done.stdout
