"""Each upstream transport (``[upstream] transport``) behaves the same for a client of the gateway.

The openai SDK talks to the gateway over a real socket, the gateway to the fake upstream over another;
only the transport that carries the gateway's upstream requests changes. Timeouts, resets, cut streams
and client disconnects must reach the client as the same statuses and events on every transport.
"""

from __future__ import annotations

import time

import openai
import pytest

from respan_gateway.testing import FakeUpstream, GatewayServer

MESSAGES = [{"role": "user", "content": "Say hello"}]
TRANSPORTS = ["httpx2", "aiohttp"]


@pytest.fixture(params=TRANSPORTS)
def gateway_on(request: pytest.FixtureRequest, gateway_factory) -> GatewayServer:
    return gateway_factory(f'[upstream]\ntransport = "{request.param}"\nconnect_timeout = 2.0\n')


def test_answer_and_what_reached_the_upstream(gateway_on: GatewayServer, fake_upstream: FakeUpstream) -> None:
    completion = gateway_on.openai(_strict_response_validation=True).chat.completions.create(
        model="gpt-test", messages=MESSAGES, extra_body={"metadata": {"k": "v"}}
    )
    assert completion.choices[0].message.content == "Hello from the fake upstream!"
    sent = fake_upstream.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.json == {"model": "gpt-test-upstream", "messages": MESSAGES}
    assert sent.headers["authorization"] == "Bearer sk-upstream-secret-key"
    assert sent.headers["content-type"] == "application/json"
    assert int(sent.headers["content-length"]) == len(sent.body)


def test_stream_arrives_in_order(gateway_on: GatewayServer) -> None:
    stream = gateway_on.openai().chat.completions.create(
        model="gpt-test", messages=MESSAGES, stream=True,
        extra_body={"extra_headers": {"x-fake-scenario": "chunks-12,slow-chunks-10"}},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) == 12
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_many_requests_reuse_the_pool(gateway_on: GatewayServer, fake_upstream: FakeUpstream) -> None:
    client = gateway_on.openai()
    for _ in range(20):
        assert client.chat.completions.create(model="gpt-test", messages=MESSAGES).choices
        assert len(list(client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True))) == 7
    assert len(fake_upstream.requests) == 40


def test_upstream_error_status_and_retry_after(gateway_on: GatewayServer) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        gateway_on.openai().chat.completions.create(
            model="fake/fake-retry-after-1", messages=MESSAGES, extra_body={"disable_fallback": True}
        )
    assert info.value.status_code == 429 and info.value.response.headers["retry-after"] == "1"
    assert "sk-upstream-secret-key" not in info.value.response.text


def test_reset_before_headers_is_502(gateway_on: GatewayServer) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        gateway_on.openai().chat.completions.create(model="fake/fake-reset", messages=MESSAGES)
    assert info.value.status_code == 502


def test_aiohttp_sends_once_more_when_the_connection_drops_before_any_answer(gateway_factory, fake_upstream: FakeUpstream) -> None:
    # What a pooled connection the upstream closed while idle looks like from the client: the request goes
    # out, the connection ends with no answer byte. The aiohttp client sends once more on a new connection
    # (as httpcore does for a stale connection); a second drop is the 502 above.
    gateway = gateway_factory('[upstream]\ntransport = "aiohttp"\n')
    fake_upstream.reset()
    completion = gateway.openai().chat.completions.create(
        model="gpt-test", messages=MESSAGES,
        extra_body={"disable_fallback": True, "extra_headers": {"x-fake-scenario": "reset", "x-fake-fail-times": "1"}},
    )
    assert completion.choices[0].message.content == "Hello from the fake upstream!"
    assert len(fake_upstream.requests) == 2


def test_unreachable_upstream_is_502(gateway_factory, request: pytest.FixtureRequest) -> None:
    dead = FakeUpstream().start()
    url = dead.url
    dead.stop()
    for transport in TRANSPORTS:
        gateway = gateway_factory(
            f'[upstream]\ntransport = "{transport}"\n'
            f'[providers.dead]\ntype = "openai_compatible"\nbase_url = "{url}/v1"\napi_key = "sk-dead-key"\n'
        )
        with pytest.raises(openai.APIStatusError) as info:
            gateway.openai().chat.completions.create(model="dead/m", messages=MESSAGES)
        assert info.value.status_code == 502, transport
        assert info.value.body["code"] == "upstream_unreachable", transport


def test_read_timeout_is_504(gateway_on: GatewayServer) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        gateway_on.openai().chat.completions.create(
            model="fake/fake-hang", messages=MESSAGES, extra_body={"timeout": 0.5, "disable_fallback": True}
        )
    assert info.value.status_code == 504
    assert time.monotonic() - started < 20


def test_stall_mid_stream_ends_with_an_error_event(gateway_on: GatewayServer) -> None:
    stream = gateway_on.openai().chat.completions.create(
        model="fake/fake-stall-after-2", messages=MESSAGES, stream=True, extra_body={"timeout": 0.5}
    )
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk)
    assert len(received) == 3  # role chunk + 2, then the idle timeout
    assert not isinstance(info.value, openai.APIStatusError)


def test_read_timeout_mid_stream_ends_with_an_error_event(gateway_factory, request: pytest.FixtureRequest) -> None:
    # The transport's own read timeout (not reliability's idle limit, left at its default): aiohttp's is
    # one deadline per wait of the stream, not its per-piece timer; both transports end the stream alike.
    for transport in TRANSPORTS:
        gateway = gateway_factory(f'[upstream]\ntransport = "{transport}"\nread_timeout = 0.5\n')
        stream = gateway.openai().chat.completions.create(model="fake/fake-stall-after-2", messages=MESSAGES, stream=True)
        received = []
        with pytest.raises(openai.APIError) as info:
            for chunk in stream:
                received.append(chunk)
        assert len(received) == 3, transport  # role chunk + 2, then the read timeout
        assert "ReadTimeout" in str(info.value), (transport, str(info.value))


def test_cut_stream_ends_with_an_error_event(gateway_on: GatewayServer) -> None:
    stream = gateway_on.openai().chat.completions.create(model="fake/fake-cut-after-2", messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            received.append(chunk)
    assert len(received) == 3


def test_client_disconnect_closes_the_upstream_request(gateway_on: GatewayServer, fake_upstream: FakeUpstream) -> None:
    stream = gateway_on.openai().chat.completions.create(
        model="gpt-test", messages=MESSAGES, stream=True,
        extra_body={"extra_headers": {"x-fake-scenario": "slow-chunks-100,chunks-100"}},
    )
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    assert fake_upstream.wait_for_disconnect(timeout=30), "the gateway kept reading from the upstream"
    deadline = time.monotonic() + 5
    while fake_upstream.open_streams and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake_upstream.open_streams == 0
