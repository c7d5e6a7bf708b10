"""respan_gateway.translate.messages on what the fake upstream never sends: parallel and interleaved
tool calls, a refusal, a stream that ends early, tool arguments that are not JSON. (The end-to-end
tests, through the anthropic SDK, are in plugins/anthropic/tests/test_anthropic_via_chat.py.)"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from respan_gateway import Call, Chunk, StreamInterrupted, UpstreamError
from respan_gateway.translate.messages import MessagesStream, completion_to_message, request_to_chat


def call_of(body: dict[str, Any] | None = None) -> Call:
    body = body or {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    return Call(kind="anthropic_messages", request_id="r1", headers={}, raw_body=msgspec.json.encode(body),
                body={k: msgspec.Raw(msgspec.json.encode(v)) for k, v in body.items()})


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: dict[str, Any] | None = None) -> Chunk:
    choices = [] if delta is None and finish is None else [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    return Chunk(msgspec.json.encode({"id": "c", "model": "m", "choices": choices, "usage": usage}))


def run(chunks: list[Chunk], call: Call | None = None) -> list[dict[str, Any]]:
    stream = MessagesStream(call or call_of())
    out = [e for c in chunks for e in stream.feed(c)] + stream.end()
    assert all(e.event == msgspec.json.decode(e.data)["type"] for e in out)
    return [msgspec.json.decode(e.data) for e in out]


def fragment(index: int, arguments: str, call_id: str | None = None, name: str | None = None) -> dict[str, Any]:
    function = {"arguments": arguments, **({"name": name} if name else {})}
    return {"tool_calls": [{"index": index, **({"id": call_id} if call_id else {}), "function": function}]}


def test_parallel_and_interleaved_tool_calls_get_a_block_each() -> None:
    events = run([
        chunk({"role": "assistant", "content": "Checking."}),
        chunk(fragment(0, '{"city":', "call_a", "weather")),
        chunk(fragment(1, '{"city":"Rome"}', "call_b", "weather")),
        chunk(fragment(0, '"Paris"}')),  # a provider that interleaves: still call_a's block
        chunk(finish="tool_calls"),
        chunk(usage={"prompt_tokens": 9, "completion_tokens": 4}),
    ])
    starts = [e for e in events if e["type"] == "content_block_start"]
    assert [(s["index"], s["content_block"]["type"]) for s in starts] == [(0, "text"), (1, "tool_use"), (2, "tool_use")]
    assert [s["content_block"].get("id") for s in starts[1:]] == ["call_a", "call_b"]
    json_by_block: dict[int, str] = {}
    for e in events:
        if e["type"] == "content_block_delta" and e["delta"]["type"] == "input_json_delta":
            json_by_block[e["index"]] = json_by_block.get(e["index"], "") + e["delta"]["partial_json"]
    assert json_by_block == {1: '{"city":"Paris"}', 2: '{"city":"Rome"}'}
    assert events[-2]["delta"]["stop_reason"] == "tool_use" and events[-2]["usage"]["input_tokens"] == 9
    assert events[-1] == {"type": "message_stop"}


def test_a_refusal_is_text_with_stop_reason_refusal() -> None:
    events = run([chunk({"role": "assistant", "refusal": "I can't help with that."}), chunk(finish="stop")])
    assert events[2]["delta"] == {"type": "text_delta", "text": "I can't help with that."}
    assert events[-2]["delta"]["stop_reason"] == "refusal"
    message = completion_to_message({"model": "m", "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": None, "refusal": "No."}}]}, call_of())
    assert message["content"] == [{"type": "text", "text": "No."}] and message["stop_reason"] == "refusal"


def test_a_stream_without_a_finish_reason_is_an_error() -> None:
    stream = MessagesStream(call_of())
    assert [e.event for e in stream.feed(chunk({"role": "assistant", "content": "Hel"}))] == [
        "message_start", "content_block_start", "content_block_delta"]
    with pytest.raises(StreamInterrupted):
        stream.end()
    with pytest.raises(StreamInterrupted):
        MessagesStream(call_of()).feed(Chunk(b'{"error": {"message": "boom"}}'))


def test_no_usage_reported_is_estimated() -> None:
    call = call_of()
    events = run([chunk({"content": "Hello there, world"}), chunk(finish="stop")], call)
    assert events[-2]["usage"]["output_tokens"] > 0
    assert call.outcome.usage is not None and call.outcome.usage.estimated


def test_tool_arguments_that_are_not_json() -> None:
    def answer(finish: str) -> dict[str, Any]:
        return completion_to_message({"model": "m", "choices": [{"index": 0, "finish_reason": finish, "message": {
            "role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                                   "function": {"name": "f", "arguments": '{"a": '}}]}}]}, call_of())

    assert answer("length")["content"][0]["input"] == {} and answer("length")["stop_reason"] == "max_tokens"
    with pytest.raises(UpstreamError) as info:
        answer("tool_calls")
    assert info.value.status == 502


def test_assistant_history_and_system_shapes() -> None:
    body = request_to_chat({"model": "m", "system": "S", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
    ], "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}, "effort": "max"}})
    assert body["messages"] == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": ""},
    ]
    assert body["response_format"]["json_schema"] == {"name": "output", "schema": {"type": "object"}, "strict": True}
    assert body["reasoning_effort"] == "high"


def test_chat_fields_sent_as_such_win_and_others_pass_through() -> None:
    body = request_to_chat({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}],
                            "thinking": {"type": "enabled", "budget_tokens": 8000}, "reasoning_effort": "minimal",
                            "top_k": 5, "mock_response": "x"})
    assert (body["reasoning_effort"], body["top_k"], body["mock_response"]) == ("minimal", 5, "x")
    assert "thinking" not in body and body["max_completion_tokens"] == 10
