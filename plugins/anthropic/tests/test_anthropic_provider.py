"""OpenAI chat through the gateway to an Anthropic upstream: the real openai SDK over a real socket, the
fake upstream speaking Anthropic's Messages wire format over another."""

from __future__ import annotations

import json
from collections.abc import Callable

import openai
import pytest

from respan_gateway.testing import FakeUpstream, GatewayServer

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
PNG = "iVBORw0KGgo="


@pytest.fixture
def gateway(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> GatewayServer:
    return gateway_factory(f"""
[providers.claude]
type = "anthropic"
base_url = "{fake_upstream.url}"
api_key = "sk-ant-config-key"
""")


@pytest.fixture
def client(gateway: GatewayServer) -> openai.OpenAI:
    return gateway.openai(_strict_response_validation=True)


def last_body(fake: FakeUpstream) -> dict:
    request = fake.requests[-1]
    assert request.path == "/v1/messages"
    return request.json


def test_text_with_system_prompt(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    answer = client.chat.completions.create(
        model="claude/claude-sonnet-4-5",
        messages=[
            {"role": "system", "content": "Be terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
            {"role": "user", "content": "Hello there"},
        ],
        stop="###",
        temperature=0.2,
        user="user-42",
        extra_body={"top_k": 5},
    )
    assert answer.choices[0].message.content == "Hello from the fake upstream!"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.object == "chat.completion"
    sent = fake_upstream.requests[-1]
    assert sent.headers["x-api-key"] == "sk-ant-config-key"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    body = sent.json
    assert body["model"] == "claude-sonnet-4-5"
    assert body["system"] == [{"type": "text", "text": "Be terse."}, {"type": "text", "text": "Answer in English."}]
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}]
    assert body["max_tokens"] == 4096  # the default: Anthropic requires one
    assert body["stop_sequences"] == ["###"]
    assert body["temperature"] == 0.2 and body["top_k"] == 5
    assert body["metadata"] == {"user_id": "user-42"}
    assert "user" not in body and "stop" not in body


def test_image_parts(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    client.chat.completions.create(
        model="claude/claude-sonnet-4-5",
        max_completion_tokens=300,
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "auto"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        ]}],
    )
    body = last_body(fake_upstream)
    assert body["max_tokens"] == 300
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


def test_tool_call_and_tool_result_round_trip(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    messages: list = [{"role": "user", "content": "Weather in Paris and the time?"}]
    first = client.chat.completions.create(model="claude/claude-sonnet-4-5", messages=messages, tools=[WEATHER_TOOL],
                                           tool_choice="required", parallel_tool_calls=False)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert call.id.startswith("toolu_")
    body = last_body(fake_upstream)
    assert body["tools"] == [{"name": "get_weather", "description": "Weather for a city",
                              "input_schema": WEATHER_TOOL["function"]["parameters"]}]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}

    messages += [
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": call.function.arguments}},
            {"id": "toolu_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "12:00"},
    ]
    second = client.chat.completions.create(model="claude/claude-sonnet-4-5", messages=messages, tools=[WEATHER_TOOL], tool_choice="none")
    assert second.choices[0].message.content == "Hello from the fake upstream!"
    body = last_body(fake_upstream)
    assert body["tool_choice"] == {"type": "none"}
    assert body["messages"][1:] == [
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": call.id, "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}},
        ]},
        {"role": "user", "content": [  # both results of the turn in one user message
            {"type": "tool_result", "tool_use_id": call.id, "content": '{"temp_c": 21}'},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "12:00"},
        ]},
    ]


def test_named_tool_choice(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    client.chat.completions.create(model="claude/claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}],
                                   tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert last_body(fake_upstream)["tool_choice"] == {"type": "tool", "name": "get_weather"}


def test_stream_text_with_usage_and_cache_tokens(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="claude/fake-cache-read-7,cache-write-3", messages=[{"role": "user", "content": "Hello there"}],
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:] if c.choices)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the fake upstream!"
    assert chunks[-2].choices[0].finish_reason == "stop"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    # 2 words uncached + 7 read + 3 written; 5 pieces out.
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (12, 5, 17)
    assert last.usage.prompt_tokens_details.cached_tokens == 7
    assert last.usage.prompt_tokens_details.cache_write_tokens == 3


def test_non_stream_usage_with_cache_tokens(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model="claude/fake-cache-read-7,cache-write-3", messages=[{"role": "user", "content": "Hello there"}])
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (12, 5, 17)
    assert answer.usage.prompt_tokens_details.cached_tokens == 7


def test_stream_without_include_usage_has_no_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="claude/claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert all(c.usage is None and c.choices for c in chunks)


def test_stream_with_tools_through_stream_helper(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(model="claude/claude-sonnet-4-5", messages=[{"role": "user", "content": "Weather?"}],
                                        tools=[WEATHER_TOOL]) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [(t.function.name, t.function.arguments) for t in choice.message.tool_calls] == [("get_weather", '{"city":"Paris"}')]
    assert choice.message.tool_calls[0].id.startswith("toolu_")


def test_thinking_passed_through_and_reasoning_returned(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    answer = client.chat.completions.create(model="claude/claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}],
                                            extra_body={"thinking": {"type": "enabled", "budget_tokens": 5000}})
    body = last_body(fake_upstream)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 5000}
    assert body["max_tokens"] > 5000
    message = answer.choices[0].message
    assert message.content == "Hello from the fake upstream!"
    assert message.model_extra["reasoning_content"] == "Let me think."
    chunks = list(client.chat.completions.create(model="claude/claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}],
                                                 stream=True, reasoning_effort="low"))
    assert last_body(fake_upstream)["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert "".join(c.choices[0].delta.model_extra.get("reasoning_content") or "" for c in chunks) == "Let me think."


def test_response_format_json_schema(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    schema = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"], "additionalProperties": False}
    client.chat.completions.create(model="claude/claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}],
                                   response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
    body = last_body(fake_upstream)
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert "response_format" not in body


@pytest.mark.parametrize(("reason", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("pause_turn", "stop"), ("max_tokens", "length"),
    ("model_context_window_exceeded", "length"), ("tool_use", "tool_calls"), ("refusal", "content_filter"),
])
def test_every_stop_reason(client: openai.OpenAI, reason: str, finish: str) -> None:
    answer = client.chat.completions.create(model=f"claude/fake-finish-{reason}", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].finish_reason == finish
    chunks = list(client.chat.completions.create(model=f"claude/fake-finish-{reason}", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == [finish]


@pytest.mark.parametrize(("status", "exc"), [
    (400, openai.BadRequestError), (401, openai.AuthenticationError), (403, openai.PermissionDeniedError),
    (404, openai.NotFoundError), (429, openai.RateLimitError), (500, openai.InternalServerError),
    (529, openai.InternalServerError),
])
def test_upstream_errors_keep_status_and_message(client: openai.OpenAI, status: int, exc: type) -> None:
    with pytest.raises(exc) as info:
        client.chat.completions.create(model=f"claude/fake-error-{status}", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == status
    assert info.value.message == f"Error code: {status} - fake upstream error {status}"
    assert "sk-ant-config-key" not in str(info.value.body)


def test_error_before_stream_is_an_http_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="claude/fake-error-429", messages=[{"role": "user", "content": "hi"}], stream=True)


def test_midstream_error_becomes_an_openai_error_event(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="claude/fake-midstream-error", messages=[{"role": "user", "content": "hi"}], stream=True)
    seen = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            seen.append(chunk)
    assert seen and seen[0].choices[0].delta.role == "assistant"
    assert "Overloaded" in info.value.message
    assert info.value.code == "overloaded_error"


def test_cut_stream_is_an_error_not_a_truncated_answer(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="claude/fake-cut-after-3", messages=[{"role": "user", "content": "hi"}], stream=True)
    with pytest.raises(openai.APIError):
        list(stream)


def test_bad_input_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="claude/claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}], n=2)
    assert info.value.param == "n"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="claude/claude-sonnet-4-5", messages=[{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}])


def test_stream_without_message_stop_but_finished_ends_cleanly(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="claude/fake-no-done", messages=[{"role": "user", "content": "hi"}],
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[-2].choices[0].finish_reason == "stop" and chunks[-1].usage.completion_tokens == 5
