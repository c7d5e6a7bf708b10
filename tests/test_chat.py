"""Chat completions through the gateway with the real openai SDK, against the fake upstream.

A client leaving mid-stream closes the upstream request: tested on each transport in
test_upstream_transports.py.
"""

from __future__ import annotations

import httpx2
import openai
import pytest

from respan_gateway.testing import TEST_KEY, FakeUpstream, GatewayServer

MESSAGES = [{"role": "user", "content": "Say hello"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def strict(gateway: GatewayServer) -> openai.OpenAI:
    return gateway.openai(_strict_response_validation=True)


def test_non_streaming_answer_reaches_the_sdk(gateway: GatewayServer, fake_upstream: FakeUpstream) -> None:
    raw = strict(gateway).chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the fake upstream!"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 5
    assert len(raw.headers["x-respan-gateway-request-id"]) == 24
    # The catalog maps the slug to the provider's own model name.
    assert fake_upstream.requests[-1].json["model"] == "gpt-test-upstream"
    assert completion.model == "gpt-test-upstream"


def test_provider_prefixed_slug_and_mock_provider(gateway: GatewayServer, fake_upstream: FakeUpstream) -> None:
    client = strict(gateway)
    assert client.chat.completions.create(model="fake/any-model", messages=MESSAGES).model == "any-model"
    assert fake_upstream.requests[-1].json["model"] == "any-model"
    mock = client.chat.completions.create(model="mock/demo", messages=MESSAGES, extra_body={"mock_response": "canned"})
    assert mock.choices[0].message.content == "canned"
    assert len(fake_upstream.requests) == 1  # the mock answered without the upstream


def test_stream_with_usage_has_one_usage_chunk_last(gateway: GatewayServer) -> None:
    stream = strict(gateway).chat.completions.create(
        model="gpt-test", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the fake upstream!"
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert usage_chunks == [chunks[-1]] and chunks[-1].choices == []
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_stream_without_usage_option_has_no_usage(gateway: GatewayServer) -> None:
    chunks = list(strict(gateway).chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True))
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)


@pytest.mark.parametrize("sent", [1, 3])
def test_stream_arrives_chunk_by_chunk(gateway: GatewayServer, fake_upstream: FakeUpstream, sent: int) -> None:
    """Each chunk reaches the client as the upstream sends it: no buffering in the gateway.

    The fake upstream sends the role chunk and ``sent`` content chunks, then holds the stream open
    and sends nothing more: the client gets every one of them while the upstream is still
    mid-stream. A gateway that waited for more bytes, for the end of the stream or for a batch of
    chunks would hold the last one back (the client's read timeout turns that into a failure, not a
    hang); with 1 content chunk any batch of 2 or more is caught."""
    with gateway.openai(timeout=30).chat.completions.create(
        model="gpt-test", messages=MESSAGES, stream=True,
        extra_body={"extra_headers": {"x-fake-scenario": f"stall-after-{sent}"}},
    ) as stream:
        chunks = [next(stream) for _ in range(1 + sent)]
        assert fake_upstream.open_streams == 1, "the upstream is still mid-stream"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.content for c in chunks[1:]), chunks
    assert all(c.choices[0].finish_reason is None for c in chunks), chunks


def test_tool_calls_stream_and_reassemble(gateway: GatewayServer, fake_upstream: FakeUpstream) -> None:
    with strict(gateway).chat.completions.stream(
        model="gpt-test", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER_TOOL]
    ) as stream:
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls"
    assert [(t.function.name, t.function.arguments) for t in message.tool_calls] == [("get_weather", '{"city":"Paris"}')]
    assert message.tool_calls[0].id.startswith("call_")
    assert fake_upstream.requests[-1].json["tools"] == [WEATHER_TOOL]


def test_tool_result_round_trip_is_forwarded_untouched(gateway: GatewayServer, fake_upstream: FakeUpstream) -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
    ]
    strict(gateway).chat.completions.create(model="gpt-test", messages=messages, tools=[WEATHER_TOOL], tool_choice="none")
    assert fake_upstream.requests[-1].json["messages"] == messages


def test_what_reaches_the_upstream(gateway: GatewayServer, fake_upstream: FakeUpstream) -> None:
    """No Respan param, no gateway key; every other field (unknown provider fields too) as sent."""
    gateway.openai().chat.completions.create(
        model="gpt-test",
        messages=MESSAGES,
        temperature=0.3,
        user="end-user-1",
        extra_body={
            "top_k": 40,
            "provider_specific": {"nested": [1, 2, {"deep": True}]},
            "respan_lookalike_field": "kept",
            "customer_identifier": "cust-1",
            "metadata": {"feature": "chat"},
            "disable_log": False,
            "fallback_models": ["mock/backup"],  # a known slug: an unknown one is a 404 (routing)
            "respan_params": {"thread_identifier": "t-1"},
            "keywordsai_params": {"custom_identifier": "c-1"},
        },
    )
    received = fake_upstream.requests[-1]
    assert received.json == {
        "model": "gpt-test-upstream",
        "messages": MESSAGES,
        "temperature": 0.3,
        "user": "end-user-1",
        "top_k": 40,
        "provider_specific": {"nested": [1, 2, {"deep": True}]},
        "respan_lookalike_field": "kept",
    }
    assert received.headers["authorization"] == "Bearer sk-upstream-secret-key"
    assert TEST_KEY not in str(received.headers)


@pytest.mark.parametrize("transport", ["httpx2", "aiohttp"])
def test_provider_cookies_are_never_sent_back(gateway_factory, fake_upstream: FakeUpstream, transport: str) -> None:
    """One upstream client serves every tenant: a provider's Set-Cookie must not ride on later requests."""
    client = gateway_factory(f'[upstream]\ntransport = "{transport}"\n').openai()
    for _ in range(2):
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert "fake_session" not in fake_upstream.requests[-1].headers.get("cookie", "")
    assert len(fake_upstream.requests) == 2


def test_unchanged_body_is_forwarded_byte_for_byte(gateway: GatewayServer, fake_upstream: FakeUpstream) -> None:
    """With no Respan param and the model name unchanged, the client's bytes go upstream as they are."""
    body = b'{"model": "m",  "messages": [{"role": "user", "content": "hi"}],\n "n": 1}'
    response = httpx2.post(gateway.base_url + "chat/completions", content=body, headers={
        "authorization": f"Bearer {TEST_KEY}", "content-type": "application/json", "x-respan-route-provider": "FAKE"})
    assert response.status_code == 200, response.text
    assert fake_upstream.requests[-1].body == body


def test_models_list(gateway: GatewayServer) -> None:
    ids = [m.id for m in gateway.openai().models.list()]
    assert "gpt-test" in ids


# -- upstream errors ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("scenario", "exc_class", "status"),
    [
        ("error-400", openai.BadRequestError, 400),
        ("error-401", openai.AuthenticationError, 401),
        ("error-404", openai.NotFoundError, 404),
        ("error-429", openai.RateLimitError, 429),
        ("error-500", openai.InternalServerError, 500),
        ("error-503", openai.InternalServerError, 503),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_errors_keep_status_and_message(gateway: GatewayServer, scenario: str, exc_class: type, status: int, stream: bool) -> None:
    with pytest.raises(exc_class) as info:
        gateway.openai().chat.completions.create(model=f"fake/fake-{scenario}", messages=MESSAGES, stream=stream)
    assert info.value.status_code == status
    assert f"fake upstream error {status}" in info.value.message
    assert info.value.response.headers["x-respan-gateway-request-id"]
    assert "sk-upstream-secret-key" not in info.value.response.text


def test_upstream_text_error_keeps_status(gateway: GatewayServer) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        gateway.openai().chat.completions.create(model="fake/fake-error-text-503", messages=MESSAGES)
    assert info.value.status_code == 503
    assert info.value.body["type"] == "upstream_error"


def test_unreachable_upstream_is_502(gateway_factory) -> None:
    dead = FakeUpstream().start()
    url = dead.url
    dead.stop()  # nothing listens there any more
    gateway = gateway_factory(f'[providers.dead]\ntype = "openai_compatible"\nbase_url = "{url}/v1"\napi_key = "sk-dead"\n')
    with pytest.raises(openai.APIStatusError) as info:
        gateway.openai().chat.completions.create(model="dead/m", messages=MESSAGES)
    assert info.value.status_code == 502
    assert info.value.body["code"] == "upstream_unreachable"


def test_connection_reset_before_headers_is_502(gateway: GatewayServer) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        gateway.openai().chat.completions.create(model="fake/fake-reset", messages=MESSAGES)
    assert info.value.status_code == 502


# -- failures after the first byte -----------------------------------------------------------------

@pytest.mark.parametrize("scenario", ["cut-after-2", "midstream-error"])
def test_upstream_failure_mid_stream_is_an_error_event(gateway: GatewayServer, scenario: str) -> None:
    stream = gateway.openai().chat.completions.create(model=f"fake/fake-{scenario}", messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk)
    assert received, "chunks before the failure reach the client"
    assert not isinstance(info.value, openai.APIStatusError)  # an error event, not an HTTP status
    assert info.value.message


def test_stream_that_ends_without_done_but_finished_is_clean(gateway: GatewayServer) -> None:
    chunks = list(gateway.openai().chat.completions.create(model="fake/fake-no-done", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the fake upstream!"


def test_hosted_provider_without_key_is_refused_before_sending(gateway_factory, fake_upstream: FakeUpstream) -> None:
    gateway = gateway_factory(f'[providers.keyless]\ntype = "openai"\nbase_url = "{fake_upstream.url}/v1"\n')
    with pytest.raises(openai.AuthenticationError) as info:
        gateway.openai().chat.completions.create(model="keyless/gpt-4o-mini", messages=MESSAGES)
    assert info.value.code == "missing_provider_key" and "[providers.keyless]" in info.value.message
    assert fake_upstream.requests == []
    # A request that brings its own key goes through (credentials plugin).
    gateway.openai().chat.completions.create(model="keyless/gpt-4o-mini", messages=MESSAGES,
                                             extra_body={"credential_override": {"keyless/gpt-4o-mini": {"api_key": "sk-own"}}})
    assert fake_upstream.requests[-1].headers["authorization"] == "Bearer sk-own"
