"""The response cache on the embedded memory backend: hits and misses, streams replayed, the key, TTL,
bounds, what is not stored, single-flight, logs, the admin purge. Real SDKs over real sockets; the
fake upstream counts its calls."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx2
import openai
import pytest

from respan_gateway import ConfigError
from respan_gateway.testing import TEST_KEY, CallRecorder, FakeUpstream, GatewayServer, test_config

from cache_helpers import ANSWER, CACHED, MESSAGES, OTHER_KEY, OTHER_TENANT_KEYS, cache_of, chat_requests, post, scenario

LOGGING = '[logging]\nflush_interval = 0.05\n'


@pytest.fixture
def gw(gateway_factory: Callable[..., GatewayServer], tmp_path) -> GatewayServer:
    return gateway_factory(LOGGING + f'spill_dir = "{tmp_path}/spill"\n', keys=OTHER_TENANT_KEYS)


def ask(gw: GatewayServer, **extra):
    """A chat completion with the cache on; the raw response (headers) and the parsed completion."""
    body = {**CACHED, **extra.pop("extra_body", {})}
    raw = gw.openai().chat.completions.with_raw_response.create(
        model=extra.pop("model", "gpt-test"), messages=extra.pop("messages", MESSAGES), extra_body=body, **extra)
    return raw, raw.parse()


# -- hit after miss, each mode replayed in the other --------------------------------------------------

def test_a_repeated_request_is_a_hit_with_no_upstream_call(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    miss, first = ask(gw)
    hit, second = ask(gw)
    assert miss.headers["x-respan-cache"] == "MISS" and hit.headers["x-respan-cache"] == "HIT"
    assert chat_requests(fake_upstream) == 1
    assert second.model_dump() == first.model_dump()  # the stored answer, unchanged
    assert second.choices[0].message.content == ANSWER


def test_without_cache_enabled_nothing_is_cached_and_there_is_no_header(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    for _ in range(2):
        raw = gw.openai().chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
        assert "x-respan-cache" not in raw.headers
    assert chat_requests(fake_upstream) == 2


def test_a_non_streamed_answer_is_replayed_as_a_stream_the_sdk_helpers_accept(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    _, original = ask(gw)
    client = gw.openai()
    with client.chat.completions.stream(model="gpt-test", messages=MESSAGES, extra_body=CACHED,
                                        stream_options={"include_usage": True}) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_completion()
    assert chat_requests(fake_upstream) == 1
    assert "content.delta" in events and "chunk" in events
    assert final.choices[0].message.content == ANSWER and final.choices[0].finish_reason == "stop"
    assert final.id == original.id and final.model == original.model
    assert final.usage is not None and final.usage.model_dump() == original.usage.model_dump()


def test_the_replayed_stream_is_valid_sse_with_usage_only_when_asked(gw: GatewayServer) -> None:
    ask(gw)
    for include_usage in (True, False):
        body = {"model": "gpt-test", "messages": MESSAGES, "stream": True, **CACHED}
        if include_usage:
            body["stream_options"] = {"include_usage": True}
        with httpx2.stream("POST", gw.base_url + "chat/completions", json=body, timeout=10,
                           headers={"authorization": f"Bearer {TEST_KEY}"}) as r:
            assert r.headers["x-respan-cache"] == "HIT" and r.headers["content-type"].startswith("text/event-stream")
            events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == ANSWER
        usage_chunks = [c for c in chunks if not c["choices"]]
        assert bool(usage_chunks) is include_usage
        if include_usage:
            assert chunks[-1]["usage"]["completion_tokens"] == 5 and all(c["usage"] is None for c in chunks[:-1])


def test_a_streamed_miss_is_stored_once_complete_and_answers_a_non_streamed_hit(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    client = gw.openai()
    streamed = list(client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True, extra_body=CACHED,
                                                   stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == ANSWER
    hit, completion = ask(gw)
    assert hit.headers["x-respan-cache"] == "HIT" and chat_requests(fake_upstream) == 1
    assert completion.choices[0].message.content == ANSWER and completion.choices[0].finish_reason == "stop"
    assert completion.id == streamed[0].id and completion.usage.completion_tokens == 5
    # ... and a streamed hit too.
    again = list(client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True, extra_body=CACHED))
    assert "".join(c.choices[0].delta.content or "" for c in again if c.choices) == ANSWER
    assert chat_requests(fake_upstream) == 1


def test_tool_calls_survive_the_round_trip_through_a_stream(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    client = gw.openai()
    list(client.chat.completions.create(model="gpt-test", messages=MESSAGES, tools=tools, stream=True, extra_body=CACHED))
    _, completion = ask(gw, tools=tools)
    call = completion.choices[0].message.tool_calls[0]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    with client.chat.completions.stream(model="gpt-test", messages=MESSAGES, tools=tools, extra_body=CACHED) as stream:
        final = stream.get_final_completion()
    replayed = final.choices[0].message.tool_calls[0]
    assert (replayed.id, replayed.function.name, replayed.function.arguments) == (call.id, call.function.name, call.function.arguments)
    assert chat_requests(fake_upstream) == 1


# -- the key ------------------------------------------------------------------------------------------

def test_the_model_is_not_in_the_key_unless_is_cached_by_model(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    ask(gw, model="gpt-test")
    hit, answer = ask(gw, model="fake/another-model")
    assert hit.headers["x-respan-cache"] == "HIT" and answer.model == "gpt-test-upstream"  # the stored answer's
    by_model = {"cache_options": {"is_cached_by_model": True}}
    assert ask(gw, model="gpt-test", extra_body=by_model)[0].headers["x-respan-cache"] == "MISS"
    assert ask(gw, model="fake/another-model", extra_body=by_model)[0].headers["x-respan-cache"] == "MISS"
    assert ask(gw, model="fake/another-model", extra_body=by_model)[0].headers["x-respan-cache"] == "HIT"
    assert chat_requests(fake_upstream) == 3


def test_the_customer_is_in_the_key_with_cache_by_customer(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    def by(customer: str, per_customer: bool) -> str:
        body = {"customer_identifier": customer, "cache_options": {"cache_by_customer": per_customer}}
        return ask(gw, extra_body=body)[0].headers["x-respan-cache"]

    assert [by("alice", True), by("alice", True), by("bob", True), by("bob", True)] == ["MISS", "HIT", "MISS", "HIT"]
    # Without the option the customer does not count: carol gets what was stored without a customer key.
    assert [by("carol", False), by("dave", False)] == ["MISS", "HIT"]
    assert chat_requests(fake_upstream) == 3


def test_tenants_never_share_entries(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    body = {"model": "gpt-test", "messages": MESSAGES, **CACHED}
    assert post(gw, body).headers["x-respan-cache"] == "MISS"
    assert post(gw, body, key=OTHER_KEY).headers["x-respan-cache"] == "MISS"
    assert post(gw, body, key=OTHER_KEY).headers["x-respan-cache"] == "HIT"
    assert chat_requests(fake_upstream) == 2


def test_a_param_that_changes_the_answer_misses_and_ignored_fields_hit(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    assert ask(gw, temperature=0.2)[0].headers["x-respan-cache"] == "MISS"
    assert ask(gw, temperature=0.7)[0].headers["x-respan-cache"] == "MISS"
    assert ask(gw, temperature=0.7)[0].headers["x-respan-cache"] == "HIT"
    assert ask(gw, temperature=0.7, max_tokens=50)[0].headers["x-respan-cache"] == "MISS"
    # user, metadata and the Respan params do not change the answer.
    same = ask(gw, temperature=0.7, user="someone", extra_body={"metadata": {"a": "b"}, "customer_identifier": "x"})
    assert same[0].headers["x-respan-cache"] == "HIT"
    changed = [{**MESSAGES[0]}, {**MESSAGES[1], "content": "Say hello to Rome"}]
    assert ask(gw, temperature=0.7, messages=changed)[0].headers["x-respan-cache"] == "MISS"
    assert chat_requests(fake_upstream) == 4


def test_the_same_request_with_keys_in_another_order_hits(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    first = b'{"model":"gpt-test","cache_enabled":true,"temperature":0.5,"response_format":{"type":"text"},' \
            b'"messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hey"},{"role":"user","content":"Bye"}]}'
    reordered = b'{"messages":[{"content":"Hi","role":"user"},{"content":"Hey","role":"assistant"},{"role":"user","content":"Bye"}],' \
                b' "response_format": {"type": "text"}, "temperature": 0.50, "cache_enabled": true, "model": "gpt-test"}'
    assert post(gw, first).headers["x-respan-cache"] == "MISS"
    second = post(gw, reordered)
    assert second.status_code == 200 and second.headers["x-respan-cache"] == "HIT"
    assert chat_requests(fake_upstream) == 1


def test_the_key_is_a_hash_and_the_log_names_it(gw: GatewayServer) -> None:
    miss, _ = ask(gw)
    hit, _ = ask(gw)
    first, second = gw.record(miss.headers["x-respan-log-id"]), gw.record(hit.headers["x-respan-log-id"])
    assert len(first["cache_key"]) == 64 and int(first["cache_key"], 16) >= 0
    assert first["cache_key"] == second["cache_key"]
    assert (first["cache_enabled"], first["cache_hit"], first["model"]) == (True, False, "gpt-test")
    assert (second["cache_hit"], second["model"], second["cost"]) == (True, "respan/cache", 0)
    assert first["cost"] > 0 and second["prompt_tokens"] == first["prompt_tokens"]
    cache = cache_of(gw)
    assert all(len(key.rsplit(":", 1)[1]) == 64 for key in cache.memory._entries)  # the hash, never the payload


# -- TTL ----------------------------------------------------------------------------------------------

def test_an_entry_expires_after_its_ttl(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    cache = cache_of(gw)
    now = [1_000_000.0]
    cache.clock = lambda: now[0]
    ttl = {"cache_ttl": 60}
    assert ask(gw, extra_body=ttl)[0].headers["x-respan-cache"] == "MISS"
    now[0] += 59
    assert ask(gw, extra_body=ttl)[0].headers["x-respan-cache"] == "HIT"
    now[0] += 2
    assert ask(gw, extra_body=ttl)[0].headers["x-respan-cache"] == "MISS"
    assert chat_requests(fake_upstream) == 2


def test_the_ttl_defaults_to_30_days_and_is_capped_by_max_ttl(gateway_factory, fake_upstream: FakeUpstream) -> None:
    recorder = CallRecorder()
    gw = gateway_factory("[cache]\nmax_ttl = 3600\n", plugins=(recorder,))
    cache = cache_of(gw)
    now = [5_000.0]
    cache.clock = lambda: now[0]
    ask(gw, extra_body={"cache_ttl": 10**9})
    assert recorder.last.outcome.cache.ttl == 3600
    now[0] += 3601
    assert ask(gw)[0].headers["x-respan-cache"] == "MISS"
    assert recorder.last.outcome.cache.ttl == 3600  # the default (30 days), capped
    default = gateway_factory("", plugins=(CallRecorder(),))
    ask(default)
    assert dict(default.gateway.middlewares)["cache"].settings.default_ttl == 30 * 86400


# -- bounds of the memory backend ------------------------------------------------------------------

def _question(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Question number {i}"}]


def test_the_memory_backend_keeps_at_most_max_entries_least_recently_used_out_first(gateway_factory, fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory("[cache]\nmax_entries = 2\n")
    assert [ask(gw, messages=_question(i))[0].headers["x-respan-cache"] for i in (1, 2)] == ["MISS", "MISS"]
    assert ask(gw, messages=_question(1))[0].headers["x-respan-cache"] == "HIT"  # 1 is now the most recent
    assert ask(gw, messages=_question(3))[0].headers["x-respan-cache"] == "MISS"  # 2 goes out
    assert len(cache_of(gw).memory) == 2
    assert ask(gw, messages=_question(1))[0].headers["x-respan-cache"] == "HIT"
    assert ask(gw, messages=_question(2))[0].headers["x-respan-cache"] == "MISS"
    metrics = httpx2.get(gw.url + "/metrics").text
    assert "respan_gateway_cache_memory_entries 2" in metrics and "respan_gateway_cache_memory_evictions 2" in metrics


def test_the_memory_backend_keeps_at_most_max_bytes(gateway_factory, fake_upstream: FakeUpstream) -> None:
    probe = gateway_factory("")
    ask(probe, messages=_question(1))
    size = cache_of(probe).memory.bytes  # one entry's size: the entries below differ by a digit
    gw = gateway_factory(f"[cache]\nmax_bytes = {size * 2 + size // 2}\n")
    for i in (1, 2, 3):
        ask(gw, messages=_question(i))
    memory = cache_of(gw).memory
    assert len(memory) == 2 and memory.bytes <= size * 2 + size // 2
    assert ask(gw, messages=_question(1))[0].headers["x-respan-cache"] == "MISS"
    assert ask(gw, messages=_question(3))[0].headers["x-respan-cache"] == "HIT"


def test_an_answer_above_max_entry_bytes_is_not_stored(gateway_factory, fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory("[cache]\nmax_entry_bytes = 4096\n")
    big = {**CACHED, **scenario("big-8000")}
    assert [ask(gw, extra_body=big)[0].headers["x-respan-cache"] for _ in range(2)] == ["MISS", "MISS"]
    assert ask(gw)[0].headers["x-respan-cache"] == "MISS"  # a small answer is stored...
    assert ask(gw)[0].headers["x-respan-cache"] == "HIT"
    assert 'respan_gateway_cache_stores_total{endpoint="chat",result="too_large"} 2' in httpx2.get(gw.url + "/metrics").text


# -- what is not stored -------------------------------------------------------------------------------

def test_errors_are_not_cached(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    for status in (500, 429, 400):
        with pytest.raises(openai.APIStatusError) as info:
            ask(gw, extra_body=scenario(f"error-{status}"))
        assert info.value.status_code == status
        assert info.value.response.headers["x-respan-cache"] == "MISS"
    assert ask(gw)[0].headers["x-respan-cache"] == "MISS"
    assert chat_requests(fake_upstream) >= 4


def test_a_cut_stream_is_not_cached(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    client = gw.openai()
    for fault in ("cut-after-2", "midstream-error", "malformed-after-1"):
        with pytest.raises(openai.APIError):
            list(client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True,
                                                extra_body={**CACHED, **scenario(fault)}))
    assert ask(gw)[0].headers["x-respan-cache"] == "MISS"
    assert ask(gw)[0].headers["x-respan-cache"] == "HIT"


def test_a_stream_the_client_leaves_is_not_cached(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    body = {"model": "gpt-test", "messages": MESSAGES, "stream": True, **CACHED, **scenario("slow-chunks-200,chunks-20")}
    with httpx2.stream("POST", gw.base_url + "chat/completions", json=body, timeout=10,
                       headers={"authorization": f"Bearer {TEST_KEY}"}) as r:
        next(r.iter_lines())
    assert fake_upstream.wait_for_disconnect()
    assert ask(gw)[0].headers["x-respan-cache"] == "MISS"


def test_a_content_filtered_answer_is_not_cached(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    filtered = {**CACHED, **scenario("finish-content_filter")}
    results = [ask(gw, extra_body=filtered) for _ in range(2)]
    assert [r[1].choices[0].finish_reason for r in results] == ["content_filter"] * 2
    assert [r[0].headers["x-respan-cache"] for r in results] == ["MISS", "MISS"]


# -- a hit is free, logged as respan/cache, omit_log, request_breakdown ----------------------------

def test_omit_log_leaves_a_hit_unlogged(gw: GatewayServer) -> None:
    omit = {"cache_options": {"omit_log": True}}
    miss, _ = ask(gw, extra_body=omit)
    assert gw.record(miss.headers["x-respan-log-id"])["cache_hit"] is False  # a miss is logged
    for options in ({"omit_log": True}, {"omit_logs": True}):
        hit, _ = ask(gw, extra_body={"cache_options": options})
        assert hit.headers["x-respan-cache"] == "HIT" and "x-respan-log-id" not in hit.headers
    logged, _ = ask(gw)
    assert gw.record(logged.headers["x-respan-log-id"])["cache_hit"] is True
    listing = httpx2.post(gw.url + "/api/request-logs/list/", headers={"authorization": f"Bearer {TEST_KEY}"},
                          json={"filters": {}}, timeout=10).json()
    assert listing["count"] == 2


def test_request_breakdown_says_cached(gw: GatewayServer) -> None:
    ask(gw)
    _, hit = ask(gw, extra_body={"request_breakdown": True})
    breakdown = hit.model_extra["request_breakdown"]
    assert breakdown["cached"] is True and breakdown["model"] == "respan/cache" and breakdown["cost"] == 0
    chunks = list(gw.openai().chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True,
                                                      extra_body={**CACHED, "request_breakdown": True}))
    assert chunks[-1].id == "request_breakdown"
    assert chunks[-1].choices[0].model_extra["request_breakdown"]["cached"] is True


def test_hits_and_misses_are_counted_on_metrics(gw: GatewayServer) -> None:
    ask(gw)
    ask(gw)
    ask(gw)
    metrics = httpx2.get(gw.url + "/metrics").text
    assert 'respan_gateway_cache_hits_total{endpoint="chat"} 2' in metrics
    assert 'respan_gateway_cache_misses_total{endpoint="chat"} 1' in metrics
    assert 'respan_gateway_cache_stores_total{endpoint="chat",result="stored"} 1' in metrics


# -- single-flight ------------------------------------------------------------------------------------

async def _concurrently(gw: GatewayServer, n: int, extra_body: dict, stream: bool = False) -> list:
    client = openai.AsyncOpenAI(base_url=gw.base_url, api_key=TEST_KEY, max_retries=0)

    async def one(i: int):
        body = {**CACHED, **extra_body}
        if stream and i % 2:  # half of them stream: they share the key
            raw = await client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES,
                                                                         stream=True, extra_body=body)
            chunks = [c async for c in raw.parse()]
            return raw.headers["x-respan-cache"], "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        raw = await client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES, extra_body=body)
        return raw.headers["x-respan-cache"], raw.parse().choices[0].message.content

    try:
        return await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    finally:
        await client.close()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "mixed-streams"])
def test_20_concurrent_identical_misses_make_one_upstream_call(gw: GatewayServer, fake_upstream: FakeUpstream, stream: bool) -> None:
    # The first takes a second upstream: the others arrive meanwhile (one that came later would be a plain hit).
    results = asyncio.run(_concurrently(gw, 20, scenario("slow-first-byte-1000"), stream=stream))
    assert not [r for r in results if isinstance(r, Exception)], results
    assert chat_requests(fake_upstream) == 1
    assert [answer for _, answer in results] == [ANSWER] * 20
    assert sorted(header for header, _ in results) == ["HIT"] * 19 + ["MISS"]
    coalesced = [line for line in httpx2.get(gw.url + "/metrics").text.splitlines()
                 if line.startswith('respan_gateway_cache_coalesced_total{endpoint="chat"}')]
    assert coalesced and float(coalesced[0].split()[-1]) >= 1


def test_when_the_leader_fails_the_others_go_upstream(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    fail_first = {"extra_headers": {"x-fake-scenario": "slow-first-byte-1000,error-500", "x-fake-fail-times": "1",
                                    "x-fake-fail-key": "leader"}}
    results = asyncio.run(_concurrently(gw, 5, fail_first))
    errors = [r for r in results if isinstance(r, Exception)]
    assert len(errors) == 1 and isinstance(errors[0], openai.InternalServerError)
    assert [answer for r in results if not isinstance(r, Exception) for answer in r[1:]] == [ANSWER] * 4
    assert chat_requests(fake_upstream) == 5


# -- the native Anthropic endpoint and embeddings -----------------------------------------------------

@pytest.fixture
def claude(gateway_factory, fake_upstream: FakeUpstream) -> GatewayServer:
    return gateway_factory(f"""
[providers.claude]
type = "anthropic"
base_url = "{fake_upstream.url}"
api_key = "sk-ant-config-key"

[models."claude-test"]
provider = "claude"
upstream_model = "claude-sonnet-4-5"
""")


def _messages_requests(fake: FakeUpstream) -> int:
    return sum(1 for r in fake.requests if r.path.endswith("/v1/messages"))


@pytest.mark.parametrize("tools", [False, True], ids=["text", "tool_use"])
def test_native_anthropic_hits_replay_in_either_mode(claude: GatewayServer, fake_upstream: FakeUpstream, tools: bool) -> None:
    import anthropic

    client = anthropic.Anthropic(base_url=claude.url + "/api/anthropic", api_key=TEST_KEY, max_retries=0,
                                 _strict_response_validation=True)
    extra = {"tools": [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]} if tools else {}
    params = {"metadata": {"respan_params": CACHED}}  # type: ignore[typeddict-unknown-key]
    raw = client.messages.with_raw_response.create(model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "Hello"}],
                                                   **params, **extra)
    original = raw.parse()
    assert raw.headers["x-respan-cache"] == "MISS"
    with client.messages.stream(model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "Hello"}],
                                **params, **extra) as stream:
        replayed = stream.get_final_message()
    assert replayed.model_dump() == original.model_dump()
    assert _messages_requests(fake_upstream) == 1
    # A streamed miss (another question) answers a non-streamed hit.
    other = [{"role": "user", "content": "Hello again"}]
    with client.messages.stream(model="claude-test", max_tokens=100, messages=other, **params, **extra) as stream:
        streamed = stream.get_final_message()
    hit = client.messages.with_raw_response.create(model="claude-test", max_tokens=100, messages=other, **params, **extra)
    assert hit.headers["x-respan-cache"] == "HIT"
    assert hit.parse().model_dump() == streamed.model_dump()
    assert _messages_requests(fake_upstream) == 2
    if tools:
        assert streamed.stop_reason == "tool_use" and streamed.content[-1].input == {"city": "Paris"}


def test_the_anthropic_beta_header_is_in_the_key(claude: GatewayServer, fake_upstream: FakeUpstream) -> None:
    body = {"model": "claude-test", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}],
            "metadata": {"respan_params": CACHED}}

    def send(beta: str | None) -> str:
        headers = {"authorization": f"Bearer {TEST_KEY}", **({"anthropic-beta": beta} if beta else {})}
        return httpx2.post(claude.url + "/api/anthropic/v1/messages", json=body, headers=headers, timeout=10).headers["x-respan-cache"]

    assert [send(None), send(None), send("some-beta-2025"), send("some-beta-2025")] == ["MISS", "HIT", "MISS", "HIT"]


def test_embeddings_are_cached(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    client = gw.openai()
    first = client.embeddings.with_raw_response.create(model="gpt-test", input=["one", "two"], extra_body=CACHED)
    second = client.embeddings.with_raw_response.create(model="gpt-test", input=["one", "two"], extra_body=CACHED)
    assert (first.headers["x-respan-cache"], second.headers["x-respan-cache"]) == ("MISS", "HIT")
    assert second.parse().data[1].embedding == first.parse().data[1].embedding
    assert sum(1 for r in fake_upstream.requests if r.path.endswith("/embeddings")) == 1


@pytest.mark.parametrize("model", ["gpt-test", "oai-native"])
def test_responses_hits_replay_in_either_mode(gateway_factory, fake_upstream: FakeUpstream, tmp_path, model: str) -> None:
    """/api/responses: translated (gpt-test over chat) and native (the Responses API upstream)."""
    native = ('[providers.oai]\ntype = "openai"\napi_key = "sk-upstream-oai"\n'
              f'base_url = "{fake_upstream.url}/v1"\n[models."oai-native"]\nprovider = "oai"\nupstream_model = "gpt-native"\n')
    gw = gateway_factory(LOGGING + f'spill_dir = "{tmp_path}/spill"\n' + native)
    client = gw.openai()
    miss = client.responses.with_raw_response.create(model=model, input="Say hello", extra_body=CACHED)
    hit = client.responses.with_raw_response.create(model=model, input="Say hello", extra_body=CACHED)
    assert (miss.headers["x-respan-cache"], hit.headers["x-respan-cache"]) == ("MISS", "HIT")
    first = miss.parse()
    assert hit.parse().output_text == first.output_text and first.output_text
    with client.responses.stream(model=model, input="Say hello", extra_body=CACHED) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output_text == first.output_text and final.id == first.id
    upstream = [r for r in fake_upstream.requests if r.path.endswith(("/chat/completions", "/responses"))]
    assert len(upstream) == 1


# -- the admin purge ----------------------------------------------------------------------------------

def test_the_admin_purge_deletes_the_tenants_entries_or_those_of_a_model_or_customer(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    def fill() -> None:
        ask(gw, messages=_question(1), extra_body={"customer_identifier": "alice"})
        ask(gw, messages=_question(2), extra_body={"customer_identifier": "bob"})
        ask(gw, model="fake/other", messages=_question(3), extra_body={"customer_identifier": "bob"})
        post(gw, {"model": "gpt-test", "messages": _question(1), **CACHED}, key=OTHER_KEY)

    def purge(**filters) -> httpx2.Response:
        return httpx2.request("DELETE", gw.url + "/api/caches/", params=filters,
                              headers={"authorization": f"Bearer {TEST_KEY}"}, timeout=10)

    def state(i: int, model: str = "gpt-test") -> str:
        return ask(gw, model=model, messages=_question(i))[0].headers["x-respan-cache"]

    fill()
    assert purge(model="fake/other").json() == {"deleted": 1}
    assert state(3, "fake/other") == "MISS"
    assert purge(customer_identifier="bob").json() == {"deleted": 1}  # question 2 (3 is stored again, without bob)
    assert state(1) == "HIT" and state(2) == "MISS"
    assert purge().json() == {"deleted": 3}
    assert state(1) == "MISS"
    # The other tenant's entry is still there.
    assert post(gw, {"model": "gpt-test", "messages": _question(1), **CACHED}, key=OTHER_KEY).headers["x-respan-cache"] == "HIT"
    # A JSON body works too, an unknown filter is a 400, and the API needs a key.
    r = httpx2.request("DELETE", gw.url + "/api/caches/", content=b'{"model": "gpt-test"}',
                       headers={"authorization": f"Bearer {TEST_KEY}"}, timeout=10)
    assert r.status_code == 200 and r.json()["deleted"] >= 1
    bad = purge(colour="red")
    assert bad.status_code == 400 and "colour" in bad.json()["error"]["message"]
    assert httpx2.request("DELETE", gw.url + "/api/caches/").status_code == 401


# -- config -------------------------------------------------------------------------------------------

def test_backend_redis_without_a_redis_url_fails_the_start_by_name(fake_upstream: FakeUpstream) -> None:
    with pytest.raises(ConfigError, match=r'cache\.backend = "redis".*state\] redis_url'):
        GatewayServer(test_config(fake_upstream.url, '[cache]\nbackend = "redis"\n'))


def test_an_unknown_setting_fails_the_start_by_name(fake_upstream: FakeUpstream) -> None:
    with pytest.raises(ConfigError, match="cache"):
        GatewayServer(test_config(fake_upstream.url, '[cache]\nmax_entrys = 3\n'))
