"""POST /api/anthropic/v1/messages with a model of a provider that speaks chat completions (the core's
translation, respan_gateway.translate.messages): the real anthropic SDK over real sockets, the fake
upstream answering as an OpenAI-compatible server, Gemini, Azure, and the mock provider."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import httpx2
import msgspec
import pytest

from respan_gateway.testing import TEST_KEY, CallRecorder, FakeUpstream, GatewayServer

ANSWER = "Hello from the fake upstream!"
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {"name": "get_weather", "description": "Current weather",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
PNG = "iVBORw0KGgo="
PDF = "JVBERi0xLjQK"
PATH = "/api/anthropic/v1/messages"


@pytest.fixture
def gateway(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> GatewayServer:
    return gateway_factory(f"""
[providers.gemini]
type = "gemini"
base_url = "{fake_upstream.url}/v1beta"
api_key = "gemini-key"

[providers.azure]
type = "azure"
base_url = "{fake_upstream.url}"
api_key = "azure-key"

[providers.openai]
type = "openai"
base_url = "{fake_upstream.url}/v1"
api_key = "sk-openai-key"
""")


@pytest.fixture
def client(gateway: GatewayServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url + "/api/anthropic", api_key=TEST_KEY, max_retries=0,
                               _strict_response_validation=True)


def sent(fake: FakeUpstream) -> dict[str, Any]:
    """The chat body the last request carried upstream."""
    request = fake.requests[-1]
    assert request.path.endswith("/chat/completions"), request.path
    return request.json


def events(gateway: GatewayServer, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The raw (event name, payload) pairs of a streamed answer."""
    response = httpx2.post(gateway.url + PATH, headers={"x-api-key": TEST_KEY}, json={**body, "stream": True}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    out, name = [], None
    for line in response.text.splitlines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            payload = msgspec.json.decode(line[6:])
            assert payload["type"] == name, "every event is named after its type"
            out.append((name, payload))
    return out


# -- text -------------------------------------------------------------------------------------------
def test_text_with_system_blocks_sampling_and_metadata(client: anthropic.Anthropic, fake_upstream: FakeUpstream) -> None:
    message = client.messages.create(
        model="gpt-test", max_tokens=300, messages=USER,
        system=[{"type": "text", "text": "Be terse."}, {"type": "text", "text": "Answer in English.", "cache_control": {"type": "ephemeral"}}],
        stop_sequences=["###"], extra_body={"temperature": 0.2, "top_p": 0.9},
        metadata={"user_id": "user-7", "respan_params": {"customer_identifier": "c-1"}},  # type: ignore[typeddict-unknown-key]
    )
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert [b.type for b in message.content] == ["text"] and message.content[0].text == ANSWER
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.model == "gpt-test-upstream"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (11, 5)  # the fake counts words
    body = sent(fake_upstream)
    assert body["model"] == "gpt-test-upstream"
    assert body["messages"] == [
        {"role": "system", "content": [{"type": "text", "text": "Be terse."}, {"type": "text", "text": "Answer in English."}]},
        {"role": "user", "content": "What is the weather in Paris?"},
    ]
    assert (body["max_completion_tokens"], body["stop"], body["temperature"], body["top_p"]) == (300, ["###"], 0.2, 0.9)
    assert body["user"] == "user-7" and "metadata" not in body and "customer_identifier" not in body
    assert "stream" not in body and "max_tokens" not in body


def test_a_string_system_and_max_tokens_default(gateway: GatewayServer, fake_upstream: FakeUpstream) -> None:
    response = httpx2.post(gateway.url + PATH, headers={"authorization": f"Bearer {TEST_KEY}"}, timeout=30,
                           json={"model": "fake/gpt-4o-mini", "system": "Be terse.", "messages": USER})
    assert response.status_code == 200, response.text
    assert response.json()["content"] == [{"type": "text", "text": ANSWER}]
    body = sent(fake_upstream)
    assert body["messages"][0] == {"role": "system", "content": "Be terse."} and body["max_completion_tokens"] == 4096


def test_stream_helper_and_final_message(client: anthropic.Anthropic, fake_upstream: FakeUpstream) -> None:
    with client.messages.stream(model="gpt-test", max_tokens=50, messages=USER) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == ANSWER
    assert final.content[0].type == "text" and final.content[0].text == ANSWER
    assert final.stop_reason == "end_turn" and final.id.startswith("msg_")
    assert (final.usage.input_tokens, final.usage.output_tokens) == (6, 5), "message_delta carries the real counts"
    body = sent(fake_upstream)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_stream_event_sequence(gateway: GatewayServer) -> None:
    seen = events(gateway, {"model": "gpt-test", "max_tokens": 50, "messages": USER})
    names = [name for name, _ in seen]
    assert names == ["message_start", "content_block_start", *["content_block_delta"] * 5, "content_block_stop",
                     "message_delta", "message_stop"]
    start = seen[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["role"] == "assistant"
    assert seen[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert "".join(p["delta"]["text"] for n, p in seen if n == "content_block_delta") == ANSWER
    delta = seen[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 5 and delta["usage"]["input_tokens"] == 6


# -- tools ------------------------------------------------------------------------------------------
def test_tool_round_trip(client: anthropic.Anthropic, fake_upstream: FakeUpstream) -> None:
    first = client.messages.create(model="gpt-test", max_tokens=100, messages=USER, tools=[WEATHER],
                                   tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert first.stop_reason == "tool_use"
    (use,) = first.content
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris"} and use.id
    body = sent(fake_upstream)
    assert body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather", "parameters": WEATHER["input_schema"]}}]
    assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False

    history = [*USER, {"role": "assistant", "content": [{"type": "text", "text": "Let me check."}, use.model_dump(exclude_none=True)]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": [{"type": "text", "text": "21 C"}]},
                                            {"type": "text", "text": "And tomorrow?"}]}]
    second = client.messages.create(model="gpt-test", max_tokens=100, messages=history, tools=[WEATHER], tool_choice={"type": "none"})
    assert second.stop_reason == "end_turn" and second.content[0].text == ANSWER
    body = sent(fake_upstream)
    assert body["messages"][1:] == [
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": use.id, "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": use.id, "content": "21 C"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    assert body["tool_choice"] == "none"
    client.messages.create(model="gpt-test", max_tokens=100, messages=USER, tools=[WEATHER],
                           tool_choice={"type": "tool", "name": "get_weather"})
    assert sent(fake_upstream)["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


def test_streamed_tool_use(client: anthropic.Anthropic, gateway: GatewayServer) -> None:
    with client.messages.stream(model="gpt-test", max_tokens=100, messages=USER, tools=[WEATHER]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    (use,) = final.content
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris"}
    seen = events(gateway, {"model": "gpt-test", "max_tokens": 100, "messages": USER, "tools": [WEATHER]})
    (start,) = [p for n, p in seen if n == "content_block_start"]
    block = start["content_block"]
    assert (block["type"], block["name"], block["input"]) == ("tool_use", "get_weather", {}) and block["id"]
    fragments = [p["delta"] for n, p in seen if n == "content_block_delta"]
    assert all(d["type"] == "input_json_delta" for d in fragments)
    assert "".join(d["partial_json"] for d in fragments) == '{"city":"Paris"}'


def test_tool_result_with_an_error_and_an_image(client: anthropic.Anthropic, fake_upstream: FakeUpstream) -> None:
    history = [*USER, {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "is_error": True, "content": [
                   {"type": "text", "text": "no station"},
                   {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]}]}]
    client.messages.create(model="gpt-test", max_tokens=10, messages=history, tools=[WEATHER])
    assert sent(fake_upstream)["messages"][2:] == [
        {"role": "tool", "tool_call_id": "call_1", "content": "Error: no station"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
    ]


# -- images and documents ---------------------------------------------------------------------------
def test_images_and_documents(client: anthropic.Anthropic, fake_upstream: FakeUpstream) -> None:
    content = [
        {"type": "text", "text": "Describe these."},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "document", "title": "report.pdf", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain notes"}},
    ]
    message = client.messages.create(model="gpt-test", max_tokens=10, messages=[{"role": "user", "content": content}])
    assert message.content[0].text == ANSWER
    assert sent(fake_upstream)["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "Describe these."},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {"type": "file", "file": {"filename": "report.pdf", "file_data": f"data:application/pdf;base64,{PDF}"}},
        {"type": "text", "text": "plain notes"},
    ]}]


# -- stop reasons -----------------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
def test_stop_reasons(client: anthropic.Anthropic, stream: bool) -> None:
    def ask(model: str, **kw: Any) -> anthropic.types.Message:
        if not stream:
            return client.messages.create(model=model, max_tokens=20, messages=USER, **kw)
        with client.messages.stream(model=model, max_tokens=20, messages=USER, **kw) as s:
            return s.get_final_message()

    assert ask("gpt-test").stop_reason == "end_turn"
    assert ask("fake/fake-finish-length").stop_reason == "max_tokens"
    assert ask("fake/fake-finish-content_filter").stop_reason == "refusal"
    assert ask("gpt-test", tools=[WEATHER]).stop_reason == "tool_use"
    # The fake names the matched sequence as vLLM does (OpenAI itself does not: that is end_turn).
    message = ask("gpt-test", stop_sequences=["###", "fake"])
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "fake")
    assert message.content[0].type == "text" and message.content[0].text == "Hello from the "


# -- thinking ---------------------------------------------------------------------------------------
def test_thinking_budget_becomes_reasoning_effort(client: anthropic.Anthropic, fake_upstream: FakeUpstream) -> None:
    for budget, effort in ((1024, "low"), (3000, "medium"), (16000, "high")):
        client.messages.create(model="gpt-test", max_tokens=budget + 1000, messages=USER, thinking={"type": "enabled", "budget_tokens": budget})
        assert sent(fake_upstream)["reasoning_effort"] == effort
    client.messages.create(model="gpt-test", max_tokens=10, messages=USER, thinking={"type": "disabled"})
    assert "reasoning_effort" not in sent(fake_upstream)


def test_reasoning_comes_back_as_thinking(client: anthropic.Anthropic, gateway: GatewayServer, fake_upstream: FakeUpstream) -> None:
    message = client.messages.create(model="fake/fake-reasoning", max_tokens=100, messages=USER)
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Let me think." and message.content[1].text == ANSWER
    assert message.usage.output_tokens == 8 and message.usage.output_tokens_details.thinking_tokens == 3
    with client.messages.stream(model="fake/fake-reasoning", max_tokens=100, messages=USER) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"] and final.content[0].thinking == "Let me think."
    seen = events(gateway, {"model": "fake/fake-reasoning", "max_tokens": 100, "messages": USER})
    starts = [p for n, p in seen if n == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["thinking", "text"] and [s["index"] for s in starts] == [0, 1]
    assert seen[2][1]["delta"] == {"type": "thinking_delta", "thinking": "Let me think."}
    assert seen[3][1] == {"type": "content_block_stop", "index": 0}
    # Thinking blocks sent back in the history are not passed to a chat provider.
    history = [*USER, {"role": "assistant", "content": [b.model_dump() for b in message.content]}, {"role": "user", "content": "More?"}]
    client.messages.create(model="gpt-test", max_tokens=10, messages=history)
    assert sent(fake_upstream)["messages"][1] == {"role": "assistant", "content": ANSWER}


# -- usage ------------------------------------------------------------------------------------------
def test_usage_counts_cached_tokens_apart(gateway_factory: Callable[..., GatewayServer]) -> None:
    recorder = CallRecorder()
    gateway = gateway_factory(plugins=(recorder,))
    client = anthropic.Anthropic(base_url=gateway.url + "/api/anthropic", api_key=TEST_KEY, max_retries=0)
    message = client.messages.create(model="fake/fake-cache-read-4", max_tokens=10, messages=USER)
    usage = recorder.last.outcome.usage
    assert usage is not None and not usage.estimated
    assert message.usage.cache_read_input_tokens == 4 == usage.cache_read_tokens
    assert message.usage.input_tokens == usage.prompt_tokens - 4 and message.usage.output_tokens == usage.completion_tokens
    with client.messages.stream(model="fake/fake-cache-read-4", max_tokens=10, messages=USER) as stream:
        final = stream.get_final_message()
    assert (final.usage.input_tokens, final.usage.cache_read_input_tokens) == (message.usage.input_tokens, 4)
    assert recorder.last.outcome.usage == usage


# -- what a chat provider cannot do: 400 naming it ---------------------------------------------------
@pytest.mark.parametrize(("extra", "named"), [
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "web_search_20250305"),
    ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "bash_20250124"),
    ({"container": "container_1"}, "`container`"),
    ({"mcp_servers": [{"type": "url", "url": "https://mcp.example.com", "name": "x"}]}, "`mcp_servers`"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "citations": {"enabled": True},
                                                 "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}]}, "citations"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}}]}]}, "'url'"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "file_1"}}]}]}, "'file'"),
    ({"messages": [{"role": "user", "content": [{"type": "search_result", "source": "s", "title": "t", "content": []}]}]}, "search_result"),
])
def test_unhonourable_fields_are_400_naming_them(client: anthropic.Anthropic, extra: dict[str, Any], named: str) -> None:
    body = {"model": "gpt-test", "max_tokens": 10, "messages": USER, **extra}
    with pytest.raises(anthropic.BadRequestError) as info:
        client.post("/v1/messages", cast_to=anthropic.types.Message, body=body)
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "invalid_request_error"
    assert named in info.value.message and "not Anthropic" in info.value.message


def test_malformed_requests_are_400(client: anthropic.Anthropic) -> None:
    for body in ({"messages": [{"role": "system", "content": "x"}]}, {"messages": []},
                 {"messages": USER, "tool_choice": {"type": "sometimes"}, "tools": [WEATHER]},
                 {"messages": USER, "thinking": {"type": "enabled"}}):
        with pytest.raises(anthropic.BadRequestError) as info:
            client.messages.create(model="gpt-test", max_tokens=10, **body)  # type: ignore[arg-type]
        assert info.value.body["error"]["type"] == "invalid_request_error"


# -- errors -----------------------------------------------------------------------------------------
def test_upstream_errors_in_anthropic_shape(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(model="fake/fake-error-429", max_tokens=10, messages=USER)
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "rate_limit_error"
    with pytest.raises(anthropic.RateLimitError):
        with client.messages.stream(model="fake/fake-error-429", max_tokens=10, messages=USER) as stream:
            stream.get_final_message()
    with pytest.raises(anthropic.AuthenticationError) as info:
        client.messages.create(model="fake/fake-error-401", max_tokens=10, messages=USER)
    assert info.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.InternalServerError) as info:
        client.messages.create(model="fake/fake-error-500", max_tokens=10, messages=USER)
    assert info.value.body["error"]["type"] == "api_error"


def test_a_cut_stream_ends_with_an_error_event(client: anthropic.Anthropic, gateway: GatewayServer) -> None:
    with pytest.raises(anthropic.APIStatusError) as info:
        with client.messages.stream(model="fake/fake-cut-after-2", max_tokens=10, messages=USER) as stream:
            for _ in stream:
                pass
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "api_error"
    response = httpx2.post(gateway.url + PATH, headers={"x-api-key": TEST_KEY}, timeout=30,
                           json={"model": "fake/fake-midstream-error", "max_tokens": 10, "messages": USER, "stream": True})
    names = [line[7:] for line in response.text.splitlines() if line.startswith("event: ")]
    assert names[0] == "message_start" and names[-1] == "error" and "message_stop" not in names


# -- every chat provider ----------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "azure/my-deployment", "gemini/gemini-2.5-flash"])
def test_every_chat_provider(client: anthropic.Anthropic, fake_upstream: FakeUpstream, model: str) -> None:
    message = client.messages.create(model=model, max_tokens=10, messages=USER, system="Be terse.")
    assert message.content[0].type == "text" and message.content[0].text == ANSWER and message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    with client.messages.stream(model=model, max_tokens=10, messages=USER) as stream:
        assert "".join(stream.text_stream) == ANSWER
        assert stream.get_final_message().usage.output_tokens > 0
    with client.messages.stream(model=model, max_tokens=10, messages=USER, tools=[WEATHER]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[-1].type == "tool_use" and final.content[-1].input == {"city": "Paris"}


def test_gemini_thinking_and_top_k(client: anthropic.Anthropic, fake_upstream: FakeUpstream) -> None:
    message = client.messages.create(model="gemini/gemini-2.5-flash", max_tokens=5000, messages=USER, extra_body={"top_k": 20},
                                     thinking={"type": "enabled", "budget_tokens": 2048})
    assert [b.type for b in message.content] == ["thinking", "text"] and message.content[0].thinking == "Let me think."
    config = fake_upstream.requests[-1].json["generationConfig"]
    assert config["topK"] == 20 and config["thinkingConfig"]["includeThoughts"] is True
    with client.messages.stream(model="gemini/gemini-2.5-flash", max_tokens=5000, messages=USER,
                                thinking={"type": "enabled", "budget_tokens": 2048}) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"] and final.usage.output_tokens_details.thinking_tokens == 3


def test_the_mock_provider(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model="mock/m", max_tokens=10, messages=USER, extra_body={"mock_response": "a b c"})
    assert message.content[0].text == "a b c" and message.usage.output_tokens == 3 and message.model == "m"
    with client.messages.stream(model="mock/m", max_tokens=10, messages=USER, extra_body={"mock_response": "x y"}) as stream:
        assert "".join(stream.text_stream) == "x y"
        assert stream.get_final_message().usage.output_tokens == 2


def test_fallback_before_the_first_event(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model="fake/fake-error-503", max_tokens=10, messages=USER,
                                extra_body={"fallback_models": ["mock/m"], "mock_response": "saved"}) as stream:
        assert "".join(stream.text_stream) == "saved"
