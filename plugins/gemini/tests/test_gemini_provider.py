"""OpenAI chat and embeddings through the gateway to a Gemini upstream: the real openai SDK over a real
socket, the fake upstream speaking Gemini's generateContent / streamGenerateContent wire format."""

from __future__ import annotations

import json
from collections.abc import Callable

import openai
import pytest

from respan_gateway.testing import FakeUpstream, GatewayServer
from respan_gateway.testing.fake_upstream import _vector

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False},
    },
}
PNG = "iVBORw0KGgo="
SECRET = "gemini-config-key-123"


@pytest.fixture
def gateway(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> GatewayServer:
    return gateway_factory(f"""
[providers.gemini]
type = "gemini"
base_url = "{fake_upstream.url}/v1beta"
api_key = "{SECRET}"
""")


@pytest.fixture
def client(gateway: GatewayServer) -> openai.OpenAI:
    return gateway.openai(_strict_response_validation=True)


def sent(fake: FakeUpstream, method: str = "generateContent") -> dict:
    request = fake.requests[-1]
    assert request.path.startswith("/v1beta/models/") and request.path.endswith(":" + method), request.path
    assert request.headers["x-goog-api-key"] == SECRET
    assert SECRET not in request.path + request.query  # never in the URL
    return request.json


def test_text_system_image_and_generation_config(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    answer = client.chat.completions.create(
        model="gemini/gemini-2.5-flash",
        messages=[
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                         {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
        ],
        max_completion_tokens=256, temperature=0.2, top_p=0.9, stop=["###"], seed=7,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}},
        extra_body={"safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}]},
    )
    assert answer.choices[0].message.content == "Hello from the fake upstream!"
    assert answer.choices[0].finish_reason == "stop"
    body = sent(fake_upstream)
    assert fake_upstream.requests[-1].path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert body["systemInstruction"] == {"parts": [{"text": "Be terse."}]}
    assert body["contents"] == [{"role": "user", "parts": [{"text": "What is this?"}, {"inlineData": {"mimeType": "image/png", "data": PNG}}]}]
    assert body["generationConfig"] == {"maxOutputTokens": 256, "temperature": 0.2, "topP": 0.9, "seed": 7, "stopSequences": ["###"],
                                        "responseMimeType": "application/json", "responseJsonSchema": {"type": "object"}}
    assert body["safetySettings"][0]["threshold"] == "BLOCK_ONLY_HIGH"
    assert "messages" not in body and "model" not in body


def test_tools_with_tool_result_round_trip(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    messages: list = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(model="gemini/gemini-2.5-flash", messages=messages, tools=[WEATHER_TOOL], tool_choice="required")
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"  # Gemini says STOP
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert call.id.startswith("call_")
    body = sent(fake_upstream)
    assert body["tools"] == [{"functionDeclarations": [{"name": "get_weather", "description": "Weather for a city",
                                                        "parametersJsonSchema": WEATHER_TOOL["function"]["parameters"]}]}]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [{"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'},
        {"role": "user", "content": "And in words?"},
    ]
    second = client.chat.completions.create(model="gemini/gemini-2.5-flash", messages=messages, tools=[WEATHER_TOOL], tool_choice="none")
    assert second.choices[0].message.content == "Hello from the fake upstream!"
    body = sent(fake_upstream)
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "NONE"}}
    assert body["contents"][1:] == [
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}}, {"text": "And in words?"}]},
    ]
    client.chat.completions.create(model="gemini/gemini-2.5-flash", messages=messages[:1], tools=[WEATHER_TOOL],
                                   tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert sent(fake_upstream)["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}


def test_stream_text_with_usage_and_cached_tokens(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    chunks = list(client.chat.completions.create(model="gemini/fake-cache-read-6", messages=[{"role": "user", "content": "Hello there"}],
                                                 stream=True, stream_options={"include_usage": True}))
    assert fake_upstream.requests[-1].path.endswith(":streamGenerateContent") and fake_upstream.requests[-1].query == "alt=sse"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the fake upstream!"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (8, 5, 13)
    assert usage.prompt_tokens_details.cached_tokens == 6


def test_stream_with_tools_through_stream_helper(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(model="gemini/gemini-2.5-flash", messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER_TOOL]) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [(t.function.name, json.loads(t.function.arguments)) for t in choice.message.tool_calls] == [("get_weather", {"city": "Paris"})]


def test_reasoning_effort_and_thoughts(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    answer = client.chat.completions.create(model="gemini/gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}], reasoning_effort="low")
    assert sent(fake_upstream)["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 1024, "includeThoughts": True}
    assert answer.choices[0].message.content == "Hello from the fake upstream!"
    assert answer.choices[0].message.model_extra["reasoning_content"] == "Let me think."
    assert answer.usage.completion_tokens_details.reasoning_tokens == 3


@pytest.mark.parametrize(("reason", "finish"), [
    ("stop", "stop"), ("max_tokens", "length"), ("safety", "content_filter"), ("recitation", "content_filter"),
    ("blocklist", "content_filter"), ("prohibited_content", "content_filter"), ("spii", "content_filter"),
    ("language", "content_filter"), ("other", "content_filter"), ("malformed_function_call", "stop"),
])
def test_every_finish_reason(client: openai.OpenAI, reason: str, finish: str) -> None:
    answer = client.chat.completions.create(model=f"gemini/fake-finish-{reason}", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].finish_reason == finish
    chunks = list(client.chat.completions.create(model=f"gemini/fake-finish-{reason}", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == [finish]


@pytest.mark.parametrize(("status", "exc", "code"), [
    (400, openai.BadRequestError, "INVALID_ARGUMENT"), (403, openai.PermissionDeniedError, "PERMISSION_DENIED"),
    (404, openai.NotFoundError, "NOT_FOUND"), (429, openai.RateLimitError, "RESOURCE_EXHAUSTED"),
    (500, openai.InternalServerError, "INTERNAL"), (503, openai.InternalServerError, "UNAVAILABLE"),
])
def test_upstream_errors(client: openai.OpenAI, status: int, exc: type, code: str) -> None:
    with pytest.raises(exc) as info:
        client.chat.completions.create(model=f"gemini/fake-error-{status}", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == status and info.value.code == code
    assert SECRET not in str(info.value.body)


def test_midstream_error(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="gemini/fake-midstream-error", messages=[{"role": "user", "content": "hi"}], stream=True)
    with pytest.raises(openai.APIError) as info:
        list(stream)
    assert "The model is overloaded." in info.value.message and info.value.code == "UNAVAILABLE"


def test_cut_stream_is_an_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="gemini/fake-cut-after-2", messages=[{"role": "user", "content": "hi"}], stream=True))
    with pytest.raises(openai.APIError):  # the body ended cleanly but without a finishReason
        list(client.chat.completions.create(model="gemini/fake-no-done", messages=[{"role": "user", "content": "hi"}], stream=True))


def test_tool_result_without_its_call_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gemini/gemini-2.5-flash", messages=[
            {"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "nope", "content": "x"}])


def test_embeddings_base64_default_and_float(gateway: GatewayServer, fake_upstream: FakeUpstream) -> None:
    lenient = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.openai().api_key, max_retries=0)
    result = lenient.embeddings.create(model="gemini/gemini-embedding-001", input=["hello world", "bye"], dimensions=4)
    body = sent(fake_upstream, "batchEmbedContents")
    assert body == {"requests": [
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "hello world"}]}, "outputDimensionality": 4},
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "bye"}]}, "outputDimensionality": 4},
    ]}
    assert [d.embedding for d in result.data] == [_vector("hello world", 4), _vector("bye", 4)]
    floats = gateway.openai(_strict_response_validation=True).embeddings.create(model="gemini/gemini-embedding-001", input="hi", encoding_format="float")
    assert floats.data[0].embedding == _vector("hi", 8)
