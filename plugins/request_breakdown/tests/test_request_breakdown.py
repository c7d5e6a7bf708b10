"""request_breakdown in the answer and as the stream's last chunk, with the logging plugin and without it."""

from __future__ import annotations

import json

import httpx2
import pytest

from respan_gateway.testing import TEST_KEY

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello to Paris"}]
ANSWER = "Hello from the fake upstream!"
# gpt-test costs 1.0 USD / 1M input and 2.0 USD / 1M output tokens; the fake counts 7 prompt and 5
# completion tokens for MESSAGES.
COST = (7 * 1.0 + 5 * 2.0) / 1e6


@pytest.fixture
def logged_gateway(gateway_factory, tmp_path):
    def start():
        return gateway_factory(f'[logging]\nspill_dir = "{tmp_path}/spill"\nflush_interval = 0.05\n')

    return start


def test_request_breakdown_in_the_body(logged_gateway) -> None:
    gw = logged_gateway()
    raw = gw.openai().chat.completions.with_raw_response.create(
        model="gpt-test", messages=MESSAGES, extra_body={"request_breakdown": True, "metadata": {"k": 1}})
    breakdown = raw.parse().model_extra["request_breakdown"]
    assert breakdown["prompt_tokens"] == 7 and breakdown["completion_tokens"] == 5
    assert breakdown["cost"] == pytest.approx(COST)
    assert breakdown["model"] == "gpt-test" and breakdown["cached"] is False and breakdown["stream"] is False
    assert breakdown["status_code"] == 200 and breakdown["latency"] > 0 and breakdown["routing_time"] >= 0
    assert breakdown["prompt_messages"] == MESSAGES and breakdown["completion_message"]["content"] == ANSWER
    assert breakdown["full_request"] == {"model": "gpt-test", "messages": MESSAGES} and breakdown["metadata"] == {"k": "1"}
    assert breakdown["log_id"] == raw.headers["x-respan-log-id"]


def test_request_breakdown_streams_as_a_final_chunk_before_done(logged_gateway) -> None:
    gw = logged_gateway()
    with httpx2.stream("POST", gw.base_url + "chat/completions", headers={"authorization": f"Bearer {TEST_KEY}"},
                       json={"model": "gpt-test", "messages": MESSAGES, "stream": True, "request_breakdown": True,
                             "stream_options": {"include_usage": True}}, timeout=10) as r:
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["id"] == "request_breakdown" and last["model"] == "extra_parameter"
    breakdown = last["choices"][0]["request_breakdown"]
    assert breakdown["stream"] is True and breakdown["completion_tokens"] == 5
    assert breakdown["completion_message"]["content"] == ANSWER and breakdown["cost"] == pytest.approx(COST)
    assert all(json.loads(e)["id"] != "request_breakdown" for e in events[:-2])
    # The openai SDK reads the extra chunk like any other.
    chunks = list(gw.openai().chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True,
                                                      extra_body={"request_breakdown": True}))
    assert chunks[-1].id == "request_breakdown"


def test_request_breakdown_works_without_the_logging_plugin(gateway_factory) -> None:
    gw = gateway_factory('[plugins]\ndisabled = ["logging"]\n')
    assert "logging" not in [name for name, _ in gw.gateway.middlewares + gw.gateway.observers]
    client = gw.openai()
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=MESSAGES, extra_body={"request_breakdown": True})
    assert "x-respan-log-id" not in raw.headers
    breakdown = raw.parse().model_extra["request_breakdown"]
    assert (breakdown["prompt_tokens"], breakdown["completion_tokens"]) == (7, 5)
    assert breakdown["cost"] == pytest.approx(COST) and breakdown["usage_estimated"] is False
    assert breakdown["completion_message"]["content"] == ANSWER and breakdown["log_id"] is None
    # A stream without usage: the breakdown's tokens are the core's estimate, and say so.
    chunks = list(client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True,
                                                 extra_body={"request_breakdown": True}))
    assert chunks[-1].id == "request_breakdown"
    streamed = chunks[-1].choices[0].model_extra["request_breakdown"]
    assert streamed["usage_estimated"] is True and streamed["completion_tokens"] > 0 and streamed["cost"] > 0
    assert streamed["completion_message"]["content"] == ANSWER and streamed["time_to_first_token"] > 0


def test_no_breakdown_unless_asked(gateway_factory) -> None:
    gw = gateway_factory()
    answer = gw.openai().chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert "request_breakdown" not in (answer.model_extra or {})
    chunks = list(gw.openai().chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True))
    assert all(c.id != "request_breakdown" for c in chunks)


def test_request_breakdown_chunk_is_valid_for_strict_sdks(logged_gateway) -> None:
    """No ``usage: {}`` (the SDK requires the token fields, or null), no second role, no second finish_reason."""
    gw = logged_gateway()
    client = gw.openai(_strict_response_validation=True)
    chunks = list(client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True,
                                                 stream_options={"include_usage": True}, extra_body={"request_breakdown": True}))
    last = chunks[-1]
    assert last.id == "request_breakdown" and last.usage is None
    assert last.choices[0].model_extra["request_breakdown"]["completion_tokens"] == 5
    assert [c.choices[0].delta.role for c in chunks if c.choices and c.choices[0].delta.role] == ["assistant"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-2].usage is not None and chunks[-2].usage.total_tokens > 0  # the usage chunk still comes
    # The SDK's .stream() helper assembles the answer as without the breakdown.
    with client.chat.completions.stream(model="gpt-test", messages=MESSAGES, extra_body={"request_breakdown": True}) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_completion()
    assert final.choices[0].message.content == ANSWER and final.choices[0].finish_reason == "stop"
    assert events.count("content.done") == 1
