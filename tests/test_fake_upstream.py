"""The fake upstream speaks OpenAI formats that the real openai SDK (3.x, strict mode) accepts,
and acts out its fault scenarios the way a client observes them."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import httpx2
import openai
import pytest
from openai import OpenAI

from respan_gateway.testing.fake_upstream import FakeUpstream, parse_scenario

MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]  # 6 words
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture(autouse=True)
def _fresh(fake: FakeUpstream) -> None:
    fake.reset()


@pytest.fixture
def client(fake: FakeUpstream) -> Iterator[OpenAI]:
    with OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0, _strict_response_validation=True) as c:
        yield c


def scenario(value: str) -> dict[str, str]:
    return {"x-fake-scenario": value}


def sse_events(text: str) -> list[str]:
    """The data payloads of a raw SSE body, asserting the `data: ...\\n\\n` framing."""
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert all(event.startswith("data: ") and "\n" not in event for event in events), events
    return [event[len("data: "):] for event in events]


def test_start_is_fast_and_stop_idempotent() -> None:
    started = time.perf_counter()
    upstream = FakeUpstream().start()
    try:
        assert time.perf_counter() - started < 1.0
        assert upstream.url.startswith("http://127.0.0.1:") and upstream.base_url == upstream.url + "/v1"
        assert httpx2.get(upstream.url + "/models").json()["object"] == "list"
    finally:
        upstream.stop()
        upstream.stop()
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(upstream.url + "/v1/models", timeout=1)


def test_non_stream_text(fake: FakeUpstream, client: OpenAI) -> None:
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert completion.object == "chat.completion" and completion.model == "gpt-4o-mini"
    choice = completion.choices[0]
    assert (choice.message.role, choice.message.content, choice.finish_reason) == (
        "assistant", "Hello from the fake upstream!", "stop")
    assert completion.usage is not None
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (6, 5, 11)
    [request] = fake.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.json == {"model": "gpt-4o-mini", "messages": MESSAGES}


def test_stream_text_with_include_usage(client: OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}))
    *content_chunks, usage_chunk = chunks
    assert all(c.usage is None and len(c.choices) == 1 for c in content_chunks)
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert (usage_chunk.usage.prompt_tokens, usage_chunk.usage.completion_tokens) == (6, 5)
    assert {c.id for c in chunks} == {chunks[0].id} and {c.model for c in chunks} == {"gpt-4o-mini"}
    deltas = [c.choices[0].delta for c in content_chunks]
    assert [d.role for d in deltas] == ["assistant"] + [None] * (len(deltas) - 1)
    assert "".join(d.content or "" for d in deltas) == "Hello from the fake upstream!"
    assert [c.choices[0].finish_reason for c in content_chunks][-2:] == [None, "stop"]
    assert deltas[-1].content is None  # the finish chunk's delta is empty


def test_stream_raw_framing_and_usage_keys(fake: FakeUpstream) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    plain = httpx2.post(fake.base_url + "/chat/completions", json=body)
    assert plain.headers["content-type"].startswith("text/event-stream")
    *chunks, done = sse_events(plain.text)
    assert done == "[DONE]" and all("usage" not in json.loads(c) for c in chunks)
    assert json.loads(chunks[-1])["choices"][0]["delta"] == {}
    body["stream_options"] = {"include_usage": True}
    *chunks, usage, done = sse_events(httpx2.post(fake.base_url + "/chat/completions", json=body).text)
    assert done == "[DONE]" and all(json.loads(c)["usage"] is None for c in chunks)
    assert json.loads(usage)["choices"] == [] and json.loads(usage)["usage"]["total_tokens"] == 11
    body = {"model": "m", "messages": MESSAGES, "stream": True, "tools": [WEATHER_TOOL]}
    first, *fragments, finish, done = sse_events(httpx2.post(fake.base_url + "/chat/completions", json=body).text)
    [call] = json.loads(first)["choices"][0]["delta"]["tool_calls"]
    assert set(call) == {"index", "id", "type", "function"}
    assert call["function"] == {"name": "get_weather", "arguments": ""}
    for fragment in fragments:
        [part] = json.loads(fragment)["choices"][0]["delta"]["tool_calls"]
        assert set(part) == {"index", "function"} and set(part["function"]) == {"arguments"}
    assert json.loads(finish)["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}]


def test_chunks_and_slow_chunks(fake: FakeUpstream, client: OpenAI) -> None:
    started = time.perf_counter()
    stream = client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, extra_headers=scenario("slow-chunks-20,chunks-12"))
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) == 12 and time.perf_counter() - started >= 13 * 0.02
    text = client.chat.completions.create(model="fake-chunks-3", messages=MESSAGES).choices[0].message.content
    assert text == "Hello from the fake upstream!"


def test_non_stream_tool_call(client: OpenAI) -> None:
    completion = client.chat.completions.create(model="m", messages=MESSAGES, tools=[WEATHER_TOOL])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    none = client.chat.completions.create(model="m", messages=MESSAGES, tools=[WEATHER_TOOL], tool_choice="none")
    assert none.choices[0].message.tool_calls is None and none.choices[0].finish_reason == "stop"


def test_stream_tool_call_through_stream_helper(client: OpenAI) -> None:
    with client.chat.completions.stream(model="m", messages=MESSAGES, tools=[WEATHER_TOOL]) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.role == "assistant"
    [call] = choice.message.tool_calls or []
    assert call.id.startswith("call_") and call.id.count("call_") == 1 and call.type == "function"
    assert call.function.name == "get_weather" and call.function.arguments == '{"city":"Paris"}'


def test_embeddings_sdk_default_base64(fake: FakeUpstream, client: OpenAI) -> None:
    # Lenient client: strict mode validates `embedding: list[float]` BEFORE the SDK decodes the
    # base64 string it asked for, so a correct base64 reply fails strict validation (SDK quirk).
    with OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0) as lenient:
        result = lenient.embeddings.create(model="text-embedding-3-small", input=["hello world", "bye"])
    assert fake.requests[-1].json["encoding_format"] == "base64"
    raw = httpx2.post(fake.base_url + "/embeddings", json=fake.requests[-1].json).json()
    assert isinstance(raw["data"][0]["embedding"], str)  # the wire really carries base64
    assert [d.index for d in result.data] == [0, 1] and result.model == "text-embedding-3-small"
    vector = result.data[0].embedding
    assert len(vector) == 8 and all(isinstance(x, float) and -1 <= x <= 1 for x in vector)
    assert result.usage.prompt_tokens == 3
    floats = client.embeddings.create(  # strict client
        model="e", input="hello world", encoding_format="float", dimensions=16)
    assert len(floats.data) == 1 and len(floats.data[0].embedding) == 16
    assert floats.data[0].embedding[:8] == vector  # same values whichever the encoding


def test_models_list(client: OpenAI) -> None:
    assert "gpt-4o-mini" in [m.id for m in client.models.list()]


def test_error_429(fake: FakeUpstream, client: OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="m", messages=MESSAGES, extra_headers=scenario("error-429"))
    error = caught.value
    assert (error.status_code, error.code, error.type) == (429, "rate_limit_exceeded", "requests")
    assert error.message == "Error code: 429 - fake upstream error 429"
    assert error.response.headers["retry-after"] == "1"
    assert len(fake.requests) == 1  # recorded though faulted


def test_errors_selected_by_model_and_text_body(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="fake-error-404", messages=MESSAGES)
    with pytest.raises(openai.InternalServerError) as caught:
        client.embeddings.create(model="fake-error-text-503", input="x")
    assert caught.value.body == "fake upstream error 503"
    with pytest.raises(openai.RateLimitError) as limited:
        client.models.list(extra_headers=scenario("retry-after-7"))
    assert limited.value.response.headers["retry-after"] == "7"
    with pytest.raises(openai.BadRequestError, match="unknown fake scenario"):
        client.models.list(extra_headers=scenario("no-such-thing"))


def test_error_before_stream_starts(client: OpenAI) -> None:
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=MESSAGES, stream=True, extra_headers=scenario("error-500"))


def test_midstream_error(client: OpenAI) -> None:
    stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True,
                                            extra_headers=scenario("midstream-error"))
    seen = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            seen.append(chunk)
    assert not isinstance(caught.value, openai.APIStatusError)
    assert caught.value.message == "fake upstream mid-stream error" and caught.value.code == "internal_error"
    assert len(seen) == 3


def test_cut_after_raises_in_iteration(fake: FakeUpstream, client: OpenAI) -> None:
    stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True,
                                            extra_headers=scenario("cut-after-2"))
    seen = []
    with pytest.raises(openai.APIConnectionError) as caught:  # openai 3.x wraps the httpx2 error
        for chunk in stream:
            seen.append(chunk)
    assert isinstance(caught.value.__cause__, httpx2.RemoteProtocolError)
    assert "incomplete chunked read" in str(caught.value.__cause__)
    assert len(seen) == 3  # role chunk + 2 content chunks


def test_malformed_and_no_done(client: OpenAI) -> None:
    stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True,
                                            extra_headers=scenario("malformed-after-1"))
    with pytest.raises(json.JSONDecodeError):
        list(stream)
    chunks = list(client.chat.completions.create(model="fake-no-done", messages=MESSAGES, stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop" and len(chunks) == 7


def test_reset_is_a_connection_error(fake: FakeUpstream, client: OpenAI) -> None:
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="m", messages=MESSAGES, extra_headers=scenario("reset"))
    assert len(fake.requests) == 1
    assert client.chat.completions.create(model="m", messages=MESSAGES).choices[0].finish_reason == "stop"


def test_hang_and_slow_first_byte(fake: FakeUpstream, client: OpenAI) -> None:
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.3).models.list(extra_headers=scenario("hang"))
    assert fake.wait_for_disconnect(2)
    started = time.perf_counter()
    client.models.list(extra_headers=scenario("slow-first-byte-200"))
    assert time.perf_counter() - started >= 0.2


def test_fail_times_then_succeed(fake: FakeUpstream, client: OpenAI) -> None:
    headers = {**scenario("error-500"), "x-fake-fail-times": "2", "x-fake-fail-key": uuid.uuid4().hex}
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="m", messages=MESSAGES, extra_headers=headers)
    for _ in range(2):
        completion = client.chat.completions.create(model="m", messages=MESSAGES, extra_headers=headers)
        assert completion.choices[0].message.content == "Hello from the fake upstream!"
    other_key = {**headers, "x-fake-fail-key": "another"}
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=MESSAGES, extra_headers=other_key)
    assert len(fake.requests) == 5


def test_wait_for_disconnect_after_client_closes_stalled_stream(fake: FakeUpstream, client: OpenAI) -> None:
    stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True,
                                            extra_headers=scenario("stall-after-2"))
    chunks = [next(stream) for _ in range(3)]
    assert chunks[2].choices[0].delta.content == "from "
    assert fake.open_streams == 1
    assert not fake.wait_for_disconnect(0.2)
    stream.close()
    assert fake.wait_for_disconnect(2)
    deadline = time.monotonic() + 2
    while fake.open_streams and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.open_streams == 0


def test_completed_stream_is_not_a_disconnect(fake: FakeUpstream, client: OpenAI) -> None:
    list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert not fake.wait_for_disconnect(0.2) and fake.open_streams == 0


def test_parse_scenario() -> None:
    parsed = parse_scenario("slow-chunks-20, chunks-50,cut-after-3")
    assert (parsed.chunk_gap, parsed.chunks, parsed.fault, parsed.arg) == (0.02, 50, "cut-after", 3)
    assert parse_scenario("model", strict=False) == parse_scenario("ok")
    with pytest.raises(ValueError):
        parse_scenario("model")
    with pytest.raises(ValueError, match="400-599"):
        parse_scenario("error-42")


def test_stop_sequences_end_the_answer_and_are_named_as_vllm_does(client: OpenAI) -> None:
    answer = client.chat.completions.create(model="fake-model", messages=MESSAGES, stop=["###", "fake"])
    choice = answer.choices[0]
    assert (choice.message.content, choice.finish_reason) == ("Hello from the ", "stop")
    assert choice.model_extra["stop_reason"] == "fake"
    chunks = list(client.chat.completions.create(model="fake-model", messages=MESSAGES, stop="from", stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello "
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].choices[0].model_extra["stop_reason"] == "from"
    plain = client.chat.completions.create(model="fake-model", messages=MESSAGES, stop="###").choices[0]
    assert plain.message.content == "Hello from the fake upstream!" and "stop_reason" not in (plain.model_extra or {})


def test_reasoning_scenario(client: OpenAI) -> None:
    answer = client.chat.completions.create(model="fake-reasoning", messages=MESSAGES)
    assert answer.choices[0].message.model_extra["reasoning_content"] == "Let me think."
    assert answer.usage.completion_tokens == 8 and answer.usage.completion_tokens_details.reasoning_tokens == 3
    chunks = list(client.chat.completions.create(model="fake-reasoning", messages=MESSAGES, stream=True))
    assert chunks[1].choices[0].delta.model_extra["reasoning_content"] == "Let me think."
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from the fake upstream!"
