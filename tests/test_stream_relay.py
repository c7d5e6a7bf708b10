"""How the gateway relays an upstream event stream: it stops when the client leaves, re-frames each
event as the client's SSE parser reads it, and reads each chat chunk once, typed, or, when the chunk
has another shape, from its bytes as it always did."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest

from respan_gateway.testing import TEST_KEY, FakeUpstream, GatewayProcess, test_config

MESSAGES = [{"role": "user", "content": "hi"}]
AUTH = {"authorization": f"Bearer {TEST_KEY}"}


def wait_for_record(url: str, log_id: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx2.get(f"{url}/api/request-logs/{log_id}/", headers=AUTH, timeout=10)
        if r.status_code == 200 or time.monotonic() > deadline:
            assert r.status_code == 200, r.text
            return r.json()
        time.sleep(0.05)


@pytest.mark.parametrize("server", ["hypercorn", "uvicorn", "granian"])
def test_a_client_leaving_a_fast_stream_stops_the_upstream_and_is_logged_499(
        tmp_path: Path, fake_upstream: FakeUpstream, server: str) -> None:
    if importlib.util.find_spec(server) is None:
        pytest.skip(f"{server} is not installed (pip install 'respan-gateway[servers]')")
    path = tmp_path / "gateway.toml"
    path.write_text(test_config(fake_upstream.url, f'[logging]\nspill_dir = "{tmp_path}/spill"\nflush_interval = 0.05\n'))
    gateway = GatewayProcess(str(path))
    gateway.command += ["--server", server]
    gateway.start()
    try:
        # A fast upstream stream (no gap between events) far longer than the socket buffers.
        body = {"model": "gpt-test", "messages": MESSAGES, "stream": True,
                "extra_headers": {"x-fake-scenario": "chunks-50000"}}
        with httpx2.stream("POST", gateway.base_url + "chat/completions", headers=AUTH, json=body, timeout=10) as r:
            assert r.status_code == 200
            log_id = r.headers["x-respan-log-id"]
            for i, _ in enumerate(r.iter_lines()):
                if i == 6:
                    break  # leave after the first few events
        assert fake_upstream.wait_for_disconnect(10), f"{server}: the gateway read the whole upstream stream after the client left"
        record = wait_for_record(gateway.url, log_id)
        assert record["status_code"] == 499 and record["status"] == "error"
    finally:
        gateway.terminate()  # SIGTERM: the server stops its workers (stop()'s SIGKILL leaves them behind)
        gateway.stop()


def test_a_finish_written_with_spaces_completes_a_stream_without_its_done(gateway) -> None:
    # The relay tells a finished answer by a choice's finish_reason (of a chunk of another shape: by
    # `"finish_reason":` not followed by `null`, spaces allowed): a stream without [DONE] whose
    # finish is spaced is complete.
    stream = gateway.openai().chat.completions.create(
        model="gpt-test", messages=MESSAGES, stream=True, stream_options={"include_usage": True},
        extra_body={"extra_headers": {"x-fake-scenario": "spaced-json,no-done"}})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the fake upstream!"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_an_upstream_event_of_several_data_lines_reaches_the_sdk_whole(gateway) -> None:
    # The upstream splits each event's JSON over two `data:` lines: one event, whose data is the two
    # lines joined by a newline. Re-framed without `data:` on the second line, the SDK gets half a JSON.
    stream = gateway.openai().chat.completions.create(
        model="gpt-test", messages=MESSAGES, stream=True,
        extra_body={"extra_headers": {"x-fake-scenario": "multiline-data"}})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the fake upstream!"
    assert chunks[-1].choices[0].finish_reason == "stop"


def stream_events(gateway, scenario: str) -> tuple[str, list[str]]:
    """A streamed chat request (usage asked) with the fake's ``scenario``: its log id and the data of
    each event the client read, as sent."""
    body = {"model": "gpt-test", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True},
            "extra_headers": {"x-fake-scenario": scenario}}
    with httpx2.stream("POST", gateway.base_url + "chat/completions", headers=AUTH, json=body, timeout=10) as r:
        assert r.status_code == 200
        return r.headers["x-respan-log-id"], [line[6:] for line in r.iter_lines() if line.startswith("data: ")]


@pytest.mark.parametrize("scenario", ["no-done", "odd-shape,no-done"])
def test_a_stream_is_relayed_as_sent_ended_and_logged_with_its_usage_whatever_its_chunks_shape(
        gateway, scenario: str) -> None:
    # Each chunk is decoded once, typed, and its end, its usage, the JSON check and the logged answer
    # are read from that. `odd-shape`: the finish chunk (its choice's `index` "0") and the usage chunk
    # (`"choices": "none"`) are valid JSON the typed read rejects, read from their bytes instead: the
    # finish still completes a stream that has no [DONE], the usage is still reported.
    log_id, events = stream_events(gateway, scenario)
    assert events[-1] == "[DONE]"
    finish, usage = json.loads(events[-3]), json.loads(events[-2])
    index = "0" if scenario.startswith("odd-shape") else 0
    assert finish["choices"] == [{"index": index, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    assert usage["choices"] == ("none" if scenario.startswith("odd-shape") else [])
    assert usage["usage"]["completion_tokens"] == 5
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-3])
    assert text == "Hello from the fake upstream!"
    record = gateway.record(log_id)
    assert (record["status_code"], record["status"]) == (200, "success")
    assert record["completion_message"] == {"role": "assistant", "content": "Hello from the fake upstream!"}
    assert (record["prompt_tokens"], record["completion_tokens"], record["usage_estimated"]) == (1, 5, False)
