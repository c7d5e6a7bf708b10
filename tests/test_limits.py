"""Size limits: what the gateway reads from a client or a provider is bounded, with a clear error."""

from __future__ import annotations

import httpx2
import openai
import pytest

from respan_gateway.testing import TEST_KEY, FakeUpstream

MESSAGES = [{"role": "user", "content": "hi"}]
AUTH = {"authorization": f"Bearer {TEST_KEY}"}
UPSTREAM_LIMITS = "[upstream]\nmax_body_bytes = 1048576\nmax_event_bytes = 65536\n"


def scenario(name: str) -> dict:
    return {"extra_headers": {"x-fake-scenario": name}}


def test_an_upstream_answer_over_max_body_bytes_is_a_502(gateway_factory) -> None:
    gw = gateway_factory(UPSTREAM_LIMITS)
    client = gw.openai()
    assert len(client.chat.completions.create(model="gpt-test", messages=MESSAGES,
                                              extra_body=scenario("big-500000")).choices[0].message.content) == 500000
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gpt-test", messages=MESSAGES, extra_body=scenario("big-2000000"))
    assert caught.value.status_code == 502
    error = caught.value.body
    assert error["code"] == "upstream_response_too_large" and "max_body_bytes" in error["message"]


def test_an_upstream_event_over_max_event_bytes_before_the_first_token_falls_back(gateway_factory) -> None:
    gw = gateway_factory(UPSTREAM_LIMITS)
    # The big event is the answer's first token. With a fallback left, the role chunk before it is held
    # back (reliability's first-token head), so the fallback answers the client's one stream.
    chunks = gw.openai().chat.completions.create(model="fake/fake-big-200000", messages=MESSAGES, stream=True,
                                                 extra_body={"fallback_models": ["gpt-test"]})
    streamed = list(chunks)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "Hello from the fake upstream!"
    assert {c.model for c in streamed} == {"gpt-test-upstream"}
    assert sum(1 for c in streamed if c.choices and c.choices[0].delta.role) == 1


def test_an_upstream_event_over_max_event_bytes_without_a_fallback_ends_the_stream(gateway_factory) -> None:
    gw = gateway_factory(UPSTREAM_LIMITS)
    # Nothing to fail over to: the role chunk went out at once, so the big event ends the stream with an
    # error event, and none of its bytes reach the client.
    r = httpx2.post(gw.base_url + "chat/completions", headers=AUTH, timeout=10,
                    json={"model": "gpt-test", "messages": MESSAGES, "stream": True, **scenario("big-200000")})
    assert r.status_code == 200
    events = [line for line in r.text.splitlines() if line.startswith("data: ")]
    assert '"role":"assistant"' in events[0].replace(" ", "")
    assert "upstream_response_too_large" in events[-1] and "max_event_bytes" in events[-1]
    assert len(r.text) < 2000


def test_an_endless_upstream_line_is_a_502_before_the_first_byte_and_closes_the_upstream(
        gateway_factory, fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory(UPSTREAM_LIMITS)
    r = httpx2.post(gw.base_url + "chat/completions", headers=AUTH, timeout=10,
                    json={"model": "gpt-test", "messages": MESSAGES, "stream": True, **scenario("no-newline-33554432")})
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_response_too_large"
    assert fake_upstream.wait_for_disconnect(10), "the gateway kept reading the endless line"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_plugin_route_refuses_a_body_over_max_body_bytes_with_413(gateway_factory, chunked: bool) -> None:
    # The logs API is a plugin route: like every route a plugin registers, its body is bounded.
    gw = gateway_factory("[server]\nmax_body_bytes = 1048576\n")
    big = b'{"filters": {}, "pad": "' + b"x" * 2_000_000 + b'"}'
    content = (big[i:i + 65536] for i in range(0, len(big), 65536)) if chunked else big
    r = httpx2.post(gw.url + "/api/request-logs/list/", content=content, timeout=10,
                    headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large" and "1048576" in r.json()["error"]["message"]
    small = httpx2.post(gw.url + "/api/request-logs/list/", json={"filters": {}}, headers=AUTH, timeout=10)
    assert small.status_code == 200, small.text
