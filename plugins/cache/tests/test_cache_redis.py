"""The response cache on Redis: shared by replicas (real `respan-gateway serve` processes), single-flight
across them, the one Redis client of the core, TTL, purge, and a Redis outage in the middle of a run
(a Redis of the test's own, never the shared one)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import httpx2
import openai
import pytest

from respan_gateway.testing import TEST_KEY, FakeUpstream, GatewayProcess, GatewayServer, test_config

from cache_helpers import ANSWER, CACHED, MESSAGES, cache_of, chat_requests, post, scenario

pytestmark = pytest.mark.shared

SUB_TENANT_KEY = "sk-respan-sub-tenant"
SUB_TENANT = f'{{ key = "{SUB_TENANT_KEY}", tenant = "acme:sub", name = "sub" }}'


def ask(gw, **extra):
    raw = gw.openai().chat.completions.with_raw_response.create(
        model=extra.pop("model", "gpt-test"), messages=extra.pop("messages", MESSAGES),
        extra_body={**CACHED, **extra.pop("extra_body", {})}, **extra)
    return raw.headers["x-respan-cache"], raw.parse()


def test_two_gateway_processes_on_one_redis_share_a_hit(fake_upstream: FakeUpstream, redis_state, tmp_path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(test_config(fake_upstream.url, redis_state + "\n[cache]\nbackend = \"redis\"\n"))
    with GatewayProcess(str(config)) as first, GatewayProcess(str(config)) as second:
        header, answer = ask(first)
        assert header == "MISS"
        header, again = ask(second)
        assert header == "HIT" and again.model_dump() == answer.model_dump()
        # ... streamed, from the other process.
        chunks = list(second.openai().chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True, extra_body=CACHED))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
        assert chat_requests(fake_upstream) == 1
    keys = [k.decode() for k in redis_state.keys()]
    assert [k.rsplit(":", 1)[0] for k in keys] == [f"{redis_state.prefix}cache:acme"]
    assert len(keys[0].rsplit(":", 1)[1]) == 64


def test_the_cache_uses_the_cores_one_redis_client(gateway_factory, redis_state) -> None:
    gw = gateway_factory(redis_state)
    cache = cache_of(gw)
    assert cache.shared and cache.memory is None  # backend "auto" with a redis_url: Redis
    ask(gw)
    assert cache.store.client is gw.gateway.state.redis
    assert "respan_gateway_cache_memory_entries" not in httpx2.get(gw.url + "/metrics").text


def test_concurrent_identical_misses_on_two_replicas_make_one_upstream_call(gateway_factory, redis_state, fake_upstream) -> None:
    first, second = gateway_factory(redis_state), gateway_factory(redis_state)

    async def run() -> list:
        clients = [openai.AsyncOpenAI(base_url=gw.base_url, api_key=TEST_KEY, max_retries=0) for gw in (first, second)]

        async def one(i: int):
            raw = await clients[i % 2].chat.completions.with_raw_response.create(
                model="gpt-test", messages=MESSAGES, extra_body={**CACHED, **scenario("slow-first-byte-1000")})
            return raw.headers["x-respan-cache"], raw.parse().choices[0].message.content

        try:
            return await asyncio.gather(*(one(i) for i in range(10)))
        finally:
            for client in clients:
                await client.close()

    results = asyncio.run(run())
    assert chat_requests(fake_upstream) == 1
    assert sorted(h for h, _ in results) == ["HIT"] * 9 + ["MISS"] and {a for _, a in results} == {ANSWER}
    assert not [k for k in redis_state.keys() if b"cache-lock" in k]  # the leader released its lock


def test_a_replica_waiting_on_a_failed_leader_goes_upstream(gateway_factory, redis_state, fake_upstream) -> None:
    first, second = gateway_factory(redis_state), gateway_factory(redis_state)
    failing = {"extra_headers": {"x-fake-scenario": "slow-first-byte-1000,error-500", "x-fake-fail-times": "1", "x-fake-fail-key": "lead"}}

    async def run() -> list:
        a = openai.AsyncOpenAI(base_url=first.base_url, api_key=TEST_KEY, max_retries=0)
        b = openai.AsyncOpenAI(base_url=second.base_url, api_key=TEST_KEY, max_retries=0)

        async def follower():
            # Once the leader's request reached the upstream, the leader holds the lock (it asks the
            # upstream only then) and has used up the one failure: observed, not slept on.
            deadline = time.monotonic() + 60
            while not fake_upstream.requests and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            return await b.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES,
                                                                     extra_body={**CACHED, **failing})

        try:
            return await asyncio.gather(
                a.chat.completions.create(model="gpt-test", messages=MESSAGES, extra_body={**CACHED, **failing}),
                follower(), return_exceptions=True)
        finally:
            await a.close()
            await b.close()

    leader, follower = asyncio.run(run())
    assert isinstance(leader, openai.InternalServerError)
    assert follower.headers["x-respan-cache"] == "MISS" and follower.parse().choices[0].message.content == ANSWER
    assert chat_requests(fake_upstream) == 2


def test_an_entry_on_redis_expires_after_its_ttl(gateway_factory, redis_state, fake_upstream) -> None:
    gw = gateway_factory(redis_state)
    now = [2_000_000.0]
    cache_of(gw).clock = lambda: now[0]
    assert ask(gw, extra_body={"cache_ttl": 120})[0] == "MISS"
    with redis_state.client() as r:
        key = next(k for k in redis_state.keys() if b":cache:" in k)
        assert 0 < r.pttl(key) <= 120_000  # Redis drops it by itself too
    now[0] += 119
    assert ask(gw)[0] == "HIT"
    now[0] += 2
    assert ask(gw)[0] == "MISS"


def test_the_purge_on_redis_keeps_to_the_tenant(gateway_factory, redis_state, fake_upstream) -> None:
    gw = gateway_factory(redis_state, keys=SUB_TENANT)
    body = {"model": "gpt-test", "messages": MESSAGES, **CACHED}
    ask(gw)
    ask(gw, model="fake/other", messages=[{"role": "user", "content": "other"}])
    post(gw, body, key=SUB_TENANT_KEY)  # tenant "acme:sub": its keys start like acme's

    def purge(**filters) -> dict:
        return httpx2.request("DELETE", gw.url + "/api/caches/", params=filters,
                              headers={"authorization": f"Bearer {TEST_KEY}"}, timeout=10).json()

    assert purge(model="fake/other") == {"deleted": 1}
    assert purge(model="nothing-like-it") == {"deleted": 0}
    assert purge() == {"deleted": 1}
    assert post(gw, body, key=SUB_TENANT_KEY).headers["x-respan-cache"] == "HIT"
    assert ask(gw)[0] == "MISS"


# -- a Redis outage mid-run ---------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnRedis:
    """A redis-server of this test alone, on a free port, with no persistence."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> OwnRedis:
        self.process = subprocess.Popen(["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no",
                                         "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    redis = OwnRedis().start()
    yield redis
    redis.stop()


def test_a_redis_outage_mid_run_degrades_to_no_cache_never_to_failed_requests(gateway_factory, own_redis, fake_upstream, capfd) -> None:
    gw = gateway_factory(f'[state]\nredis_url = "redis://127.0.0.1:{own_redis.port}/0"\ncommand_timeout = 0.3\nconnect_timeout = 0.3\n')
    assert ask(gw)[0] == "MISS"
    assert ask(gw)[0] == "HIT"
    own_redis.stop()
    for _ in range(3):  # non-streamed and streamed, all answered by the upstream
        header, answer = ask(gw)
        assert header == "MISS" and answer.choices[0].message.content == ANSWER
    chunks = list(gw.openai().chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True, extra_body=CACHED))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    assert chat_requests(fake_upstream) == 5
    metrics = httpx2.get(gw.url + "/metrics").text
    failed = [line for line in metrics.splitlines() if line.startswith('respan_gateway_cache_unavailable_total{operation="get"}')]
    assert failed and float(failed[0].split()[-1]) >= 4
    warnings = [line for line in capfd.readouterr().out.splitlines() if "cache_unavailable" in line]
    assert len(warnings) == 1  # rate-limited: one line, however many requests
    # Redis back: the cache works again.
    own_redis.start()
    states = [ask(gw)[0] for _ in range(2)]
    assert states == ["MISS", "HIT"]
