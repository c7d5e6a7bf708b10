"""The native endpoint POST /api/anthropic/v1/messages, driven by the real anthropic SDK (current line)."""

from __future__ import annotations

from collections.abc import Callable

import anthropic
import httpx2
import pytest

from respan_gateway.testing import TEST_KEY, CallRecorder, FakeUpstream, GatewayServer

MESSAGES = [{"role": "user", "content": "Hello there"}]


@pytest.fixture
def gateway(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> GatewayServer:
    return gateway_factory(f"""
[providers.claude]
type = "anthropic"
base_url = "{fake_upstream.url}"
api_key = "sk-ant-config-key"

[models."claude-test"]
provider = "claude"
upstream_model = "claude-sonnet-4-5"
""")


@pytest.fixture
def bearer(gateway: GatewayServer) -> anthropic.Anthropic:
    """The SDK as users configure it: api_key= (2.x sends it as Authorization: Bearer)."""
    return anthropic.Anthropic(base_url=gateway.url + "/api/anthropic", api_key=TEST_KEY, max_retries=0,
                               _strict_response_validation=True)


@pytest.fixture
def x_api_key(gateway: GatewayServer) -> anthropic.Anthropic:
    """The 0.x-style header: x-api-key."""
    return anthropic.Anthropic(base_url=gateway.url + "/api/anthropic", api_key=None, max_retries=0,
                               default_headers={"x-api-key": TEST_KEY})


def test_non_stream_with_bearer_and_metadata_params(bearer: anthropic.Anthropic, fake_upstream: FakeUpstream) -> None:
    message = bearer.messages.create(
        model="claude-test", max_tokens=100, messages=MESSAGES, system="Be terse.",
        metadata={"user_id": "user-1", "respan_params": {"customer_identifier": "cust-1", "metadata": {"k": "v"}}},  # type: ignore[typeddict-unknown-key]
        extra_headers={"anthropic-beta": "prompt-caching-2024-07-31", "anthropic-version": "2099-01-01"},
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].text == "Hello from the fake upstream!"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 4
    sent = fake_upstream.requests[-1]
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == "sk-ant-config-key"  # the provider key, never the gateway key
    assert TEST_KEY not in str(sent.headers)
    assert sent.headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    body = sent.json
    assert body["model"] == "claude-sonnet-4-5"
    assert body["metadata"] == {"user_id": "user-1"}  # Respan params removed, Anthropic's user_id kept
    assert body["system"] == "Be terse." and body["max_tokens"] == 100


def test_non_stream_with_x_api_key(x_api_key: anthropic.Anthropic, fake_upstream: FakeUpstream) -> None:
    message = x_api_key.messages.create(model="claude/claude-sonnet-4-5", max_tokens=10, messages=MESSAGES,
                                        metadata={"keywordsai_params": {"customer_identifier": "c"}})  # type: ignore[typeddict-unknown-key]
    assert message.content[0].text == "Hello from the fake upstream!"
    assert "metadata" not in fake_upstream.requests[-1].json  # emptied metadata is dropped


@pytest.mark.parametrize("client_name", ["bearer", "x_api_key"])
def test_stream_passes_through(client_name: str, request: pytest.FixtureRequest, fake_upstream: FakeUpstream) -> None:
    client: anthropic.Anthropic = request.getfixturevalue(client_name)
    with client.messages.stream(model="claude-test", max_tokens=50, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from the fake upstream!"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 5


def test_stream_tool_use_passes_through(bearer: anthropic.Anthropic) -> None:
    tool = {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
    with bearer.messages.stream(model="claude-test", max_tokens=50, messages=MESSAGES, tools=[tool]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use" and final.content[0].input == {"city": "Paris"}


def test_raw_events_are_unchanged(gateway: GatewayServer) -> None:
    response = httpx2.post(gateway.url + "/api/anthropic/v1/messages", headers={"x-api-key": TEST_KEY},
                           json={"model": "claude-test", "messages": MESSAGES, "stream": True}, timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    names = [line[len("event: "):] for line in response.text.splitlines() if line.startswith("event: ")]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert "ping" in names and "data: [DONE]" not in response.text


def test_max_tokens_defaults_to_4096(gateway: GatewayServer, fake_upstream: FakeUpstream) -> None:
    response = httpx2.post(gateway.url + "/api/anthropic/v1/messages", headers={"authorization": f"Bearer {TEST_KEY}"},
                           json={"model": "claude-test", "messages": MESSAGES}, timeout=30)
    assert response.status_code == 200, response.text
    assert fake_upstream.requests[-1].json["max_tokens"] == 4096


def test_errors_in_anthropic_shape(bearer: anthropic.Anthropic, gateway: GatewayServer) -> None:
    with pytest.raises(anthropic.RateLimitError) as info:
        bearer.messages.create(model="claude/fake-error-429", max_tokens=10, messages=MESSAGES)
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "rate_limit_error"
    with pytest.raises(anthropic.InternalServerError) as info:
        bearer.messages.create(model="claude/fake-error-529", max_tokens=10, messages=MESSAGES)
    assert info.value.body["error"]["type"] == "overloaded_error"
    with pytest.raises(anthropic.NotFoundError) as info:
        bearer.messages.create(model="no-such-model", max_tokens=10, messages=MESSAGES)
    assert info.value.body["error"]["type"] == "not_found_error"
    wrong = anthropic.Anthropic(base_url=gateway.url + "/api/anthropic", api_key="wrong-key", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        wrong.messages.create(model="claude-test", max_tokens=10, messages=MESSAGES)
    assert info.value.body["error"]["type"] == "authentication_error"
    response = httpx2.post(gateway.url + "/api/anthropic/v1/messages", headers={"x-api-key": TEST_KEY}, content=b"{oops", timeout=30)
    assert response.status_code == 400
    assert response.json()["type"] == "error" and response.json()["error"]["type"] == "invalid_request_error"


def test_midstream_error_is_an_anthropic_error_event(bearer: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.APIStatusError) as info:
        with bearer.messages.stream(model="claude/fake-midstream-error", max_tokens=10, messages=MESSAGES) as stream:
            for _ in stream:
                pass
    assert info.value.body["error"]["type"] == "overloaded_error"


def test_a_chat_provider_serves_the_native_endpoint_through_the_translation(bearer: anthropic.Anthropic, fake_upstream: FakeUpstream) -> None:
    # (test_anthropic_via_chat.py covers the translation; here: the Anthropic adapter's own path stays native.)
    message = bearer.messages.create(model="fake/gpt-4o-mini", max_tokens=10, messages=MESSAGES)
    assert message.content[0].text == "Hello from the fake upstream!"
    assert fake_upstream.requests[-1].path == "/v1/chat/completions"
    bearer.messages.create(model="claude-test", max_tokens=10, messages=MESSAGES)
    assert fake_upstream.requests[-1].path == "/v1/messages"


def test_native_usage_reaches_the_outcome(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    # Anthropic's input_tokens exclude the cache; the outcome's prompt_tokens count every input token.
    recorder = CallRecorder()
    gateway = gateway_factory(f'[providers.claude]\ntype = "anthropic"\nbase_url = "{fake_upstream.url}"\napi_key = "k"\n',
                              plugins=(recorder,))
    client = anthropic.Anthropic(base_url=gateway.url + "/api/anthropic", api_key=TEST_KEY, max_retries=0)
    message = client.messages.create(model="claude/fake-cache-read-7", max_tokens=10, messages=MESSAGES)
    usage = recorder.last.outcome.usage
    assert usage is not None and usage.cache_read_tokens == 7 == message.usage.cache_read_input_tokens
    assert (usage.prompt_tokens, usage.completion_tokens) == (message.usage.input_tokens + 7, message.usage.output_tokens)
    with client.messages.stream(model="claude/fake-cache-read-7", max_tokens=10, messages=MESSAGES) as stream:
        final = stream.get_final_message()
    usage = recorder.last.outcome.usage
    assert usage is not None and usage.cache_read_tokens == 7
    assert (usage.prompt_tokens, usage.completion_tokens) == (final.usage.input_tokens + 7, final.usage.output_tokens)
