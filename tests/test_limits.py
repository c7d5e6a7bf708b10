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


def test_an_upstream_event_over_max_event_bytes_is_a_502_before_the_first_token(gateway_factory) -> None:
    gw = gateway_factory(UPSTREAM_LIMITS)
    # The big event is the answer's first token: the role chunk before it is held back (reliability's
    # first-token head), so the client gets a plain error answer, not a started stream.
    r = httpx2.post(gw.base_url + "chat/completions", headers=AUTH, timeout=10,
                    json={"model": "gpt-test", "messages": MESSAGES, "stream": True, **scenario("big-200000")})
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_response_too_large" and "max_event_bytes" in r.text
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
