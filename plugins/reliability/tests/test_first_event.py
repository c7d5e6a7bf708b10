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

from respan_gateway.testing import GatewayServer

MESSAGES = [{"role": "user", "content": "Say hello"}]


def _sse(payload: object) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _chunk(delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
    return {"id": "chatcmpl-gate", "object": "chat.completion.chunk", "created": 1, "model": "gated-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


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
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                self.end_headers()
                self.wfile.write(_sse(_chunk({"role": "assistant", "content": ""})))
                self.wfile.flush()
                gated.role_sent.set()
                while not gated.gate.wait(0.05):
                    if gated.stop_event.is_set():
                        return
                gated.content_sent.set()
                try:
                    for piece in ("Hello", " there"):
                        self.wfile.write(_sse(_chunk({"content": piece})))
                    self.wfile.write(_sse(_chunk({}, "stop")))
                    self.wfile.write(b"data: [DONE]\n\n")
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
