"""A stream is held until its first token only when a failure there could be rescued (issue 17).

The upstream here is a gate of our own over a real socket: it sends the response headers and the
role-only chunk, then holds the content until the test opens the gate. Nothing here measures a
duration: the client must read the role chunk while the content is still held (so the gateway did
not hold it back), and the first-token limit still ends a stream that never sends a token.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest

from respan_gateway.testing import TEST_KEY, GatewayServer

MESSAGES = [{"role": "user", "content": "Say hello"}]


def _sse(payload: object) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _chunk(delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
    return {"id": "chatcmpl-gate", "object": "chat.completion.chunk", "created": 1, "model": "gated-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _chat_frames() -> tuple[bytes, bytes]:
    """A chat stream: the role-only chunk, then (once released) the content, the finish and [DONE]."""
    rest = b"".join(_sse(_chunk({"content": piece})) for piece in ("Hello", " there"))
    return _sse(_chunk({"role": "assistant", "content": ""})), rest + _sse(_chunk({}, "stop")) + b"data: [DONE]\n\n"


def _event(name: str, payload: dict[str, object]) -> bytes:
    return f"event: {name}\n".encode() + _sse({"type": name, **payload})


def _anthropic_frames() -> tuple[bytes, bytes]:
    """A Messages stream: message_start and ping, then (once released) the text block and the stop."""
    message = {"id": "msg_gate", "type": "message", "role": "assistant", "model": "gated-claude", "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 1}}
    head = _event("message_start", {"message": message}) + _event("ping", {})
    rest = (_event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
            + b"".join(_event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}}) for p in ("Hello", " there"))
            + _event("content_block_stop", {"index": 0})
            + _event("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 2}})
            + _event("message_stop", {}))
    return head, rest


class GatedUpstream:
    """An OpenAI-compatible chat stream whose content waits for :meth:`release` (or never comes)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.role_sent = threading.Event()
        self.content_sent = threading.Event()  # set just before the first content chunk is written
        self.stop_event = threading.Event()
        gated = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                anthropic = self.path.endswith("/messages")
                head, rest = (_anthropic_frames() if anthropic else _chat_frames())
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                self.end_headers()
                self.wfile.write(head)
                self.wfile.flush()
                gated.role_sent.set()
                while not gated.gate.wait(0.05):
                    if gated.stop_event.is_set():
                        return
                gated.content_sent.set()
                try:
                    self.wfile.write(rest)
                    self.wfile.flush()
                except OSError:  # the gateway left (the first-token limit ran out)
                    pass
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="gated-upstream", daemon=True)

    def release(self) -> None:
        self.gate.set()

    def __enter__(self) -> GatedUpstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def gated() -> Iterator[GatedUpstream]:
    with GatedUpstream() as upstream:
        yield upstream


@pytest.fixture
def start(gateway_factory: Callable[..., GatewayServer], gated: GatedUpstream) -> Callable[..., GatewayServer]:
    def make(first_token_timeout: float = 30.0) -> GatewayServer:
        return gateway_factory(f"""
[providers.gated]
type = "openai_compatible"
base_url = "{gated.url}/v1"
api_key = "sk-gated-key"

[providers.gclaude]
type = "anthropic"
base_url = "{gated.url}"
api_key = "sk-ant-gated-key"

[reliability]
first_token_timeout = {first_token_timeout}
""")

    return make


def test_stream_without_fallback_gets_its_first_event_before_the_first_token(
        start: Callable[..., GatewayServer], gated: GatedUpstream) -> None:
    gw = start()
    stream = gw.openai().chat.completions.create(model="gated/gated-model", messages=MESSAGES, stream=True)
    chunks = iter(stream)
    first = next(chunks)
    # The role chunk reached the client while the upstream still held every content chunk.
    assert not gated.content_sent.is_set() and not gated.gate.is_set()
    assert first.choices[0].delta.role == "assistant" and not first.choices[0].delta.content
    gated.release()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello there"


def test_stream_with_retries_left_is_held_until_its_first_token(
        start: Callable[..., GatewayServer], gated: GatedUpstream) -> None:
    # Retries asked for: a silent head could be resent, so the client gets nothing before the first token.
    gw = start()
    got_first = threading.Event()
    result: dict[str, object] = {}

    def read() -> None:
        stream = gw.openai().chat.completions.create(model="gated/gated-model", messages=MESSAGES, stream=True,
                                                     extra_body={"retry_params": {"num_retries": 1}})
        chunks = iter(stream)
        result["first"] = next(chunks)
        result["content_out_first"] = gated.content_sent.is_set()
        got_first.set()
        result["text"] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert gated.role_sent.wait(30)
    gated.release()
    reader.join(60)
    assert got_first.is_set()
    # The first event the client read came after the content had left the upstream.
    assert result["content_out_first"] is True
    assert result["text"] == "Hello there"


def test_first_token_limit_still_ends_a_stream_without_fallback(start: Callable[..., GatewayServer], gated: GatedUpstream) -> None:
    gw = start(first_token_timeout=0.5)
    stream = gw.openai().chat.completions.create(model="gated/gated-model", messages=MESSAGES, stream=True)
    chunks = iter(stream)
    assert next(chunks).choices[0].delta.role == "assistant"
    with pytest.raises(openai.APIError) as info:
        for _ in chunks:
            pass
    assert "first_token_timeout" in str(info.value)
    assert not gated.gate.is_set()


def test_native_anthropic_stream_without_fallback_gets_message_start_before_the_first_token(
        start: Callable[..., GatewayServer], gated: GatedUpstream) -> None:
    import anthropic

    gw = start()
    client = anthropic.Anthropic(base_url=gw.url + "/api/anthropic", api_key=TEST_KEY, max_retries=0)
    with client.messages.stream(model="gclaude/gated-claude", max_tokens=50, messages=MESSAGES) as stream:
        events = iter(stream)
        first = next(events)
        # message_start reached the client while the upstream still held the text.
        assert first.type == "message_start" and not gated.content_sent.is_set()
        gated.release()
        for _ in events:
            pass
        assert stream.get_final_message().content[0].text == "Hello there"
