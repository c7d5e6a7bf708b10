"""A fast fake OpenAI upstream for the benchmark: a bare asyncio protocol on uvloop, HTTP/1.1 keep-alive.

It must never be the bottleneck, so it does the least an upstream can: no framework, no JSON encoding
per request (the answers are prebuilt bytes), one small msgspec decode to read ``model`` and ``stream``.
``bench/run.py`` measures it alone and prints its capacity next to the gateway's.

    python bench/upstream.py --port 9100

``POST .../chat/completions``:
  - ``stream`` false: a complete chat completion (about 500 bytes, usage included);
  - ``stream`` true: ``chunks`` SSE chunks (role chunk first, finish chunk last), ``gap`` ms apart, then
    ``data: [DONE]``, sent with chunked transfer encoding. Defaults: 50 chunks, 20 ms. A model named
    ``stream-<chunks>-<gap ms>`` (e.g. ``stream-10-1000``) changes them for that request.
``POST .../embeddings``: one 8-dimension embedding per request (prebuilt); ``POST .../responses`` and
``POST .../messages``: a complete Responses / Anthropic Messages answer (not streamed), for a provider
whose adapter speaks those natively (``openai_compatible`` serves them through chat). The bench sends
one request of every kind before it measures idle RSS. Anything else is a 404. Request bodies must carry ``content-length`` (every client the bench uses does).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import time

import msgspec


class _Request(msgspec.Struct):
    model: str = ""
    stream: bool = False


_decode_request = msgspec.json.Decoder(_Request).decode
_encode = msgspec.json.encode
_STREAM_MODEL = re.compile(r"stream-(\d+)-(\d+)")

COMPLETION = _encode({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "gpt-bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the bench upstream!",
                                         "refusal": None, "annotations": []},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15,
              "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
    "service_tier": "default", "system_fingerprint": "fp_bench",
})
JSON_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(COMPLETION))
JSON_RESPONSE = JSON_HEAD + COMPLETION
STREAM_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\n"
               b"transfer-encoding: chunked\r\n\r\n")
EMBEDDING = _encode({
    "object": "list", "model": "text-embedding-bench",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.01 * i for i in range(8)]}],
    "usage": {"prompt_tokens": 5, "total_tokens": 5},
})
RESPONSE = _encode({
    "id": "resp_bench", "object": "response", "created_at": 1700000000, "status": "completed", "model": "gpt-bench",
    "output": [{"type": "message", "id": "msg_bench", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello from the bench upstream!", "annotations": []}]}],
    "usage": {"input_tokens": 9, "output_tokens": 6, "total_tokens": 15},
})
MESSAGE = _encode({
    "id": "msg_bench", "type": "message", "role": "assistant", "model": "claude-bench",
    "content": [{"type": "text", "text": "Hello from the bench upstream!"}], "stop_reason": "end_turn",
    "stop_sequence": None, "usage": {"input_tokens": 9, "output_tokens": 6},
})


def _json_response(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body


OTHER_RESPONSES = ((b"/embeddings", _json_response(EMBEDDING)), (b"/responses", _json_response(RESPONSE)),
                   (b"/messages", _json_response(MESSAGE)))
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 21\r\n\r\n{\"error\":\"not found\"}"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def _chunk(payload: dict) -> bytes:
    event = b"data: " + _encode(payload) + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


def _stream_frames(chunks: int) -> list[bytes]:
    """The HTTP chunks of one streamed completion: role chunk, content pieces, finish chunk, [DONE]."""
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": "gpt-bench",
            "system_fingerprint": "fp_bench"}

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        return _chunk({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    frames = [chunk({"role": "assistant", "content": "", "refusal": None})]
    frames += [chunk({"content": f"word{i} "}) for i in range(max(chunks - 2, 0))]
    frames.append(chunk({}, "stop"))
    done = b"data: [DONE]\n\n"
    frames.append(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
    return frames


_FRAMES: dict[int, list[bytes]] = {}


def frames_for(chunks: int) -> list[bytes]:
    frames = _FRAMES.get(chunks)
    if frames is None:
        frames = _FRAMES[chunks] = _stream_frames(chunks)
    return frames


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: parse requests as they arrive, answer in order (no pipelining needed)."""

    def __init__(self, defaults: tuple[int, float]) -> None:
        self.defaults = defaults
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.streaming: asyncio.Task | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.streaming is not None:
            self.streaming.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None and self.streaming is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            length = 0
            lower = head.lower()
            at = lower.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = lower.find(b"\r\n", at + 2)
                length = int(head[at + 17: stop if stop >= 0 else len(head)])
            elif b"\r\ntransfer-encoding:" in lower:
                self.transport.write(BAD_REQUEST)
                self.transport.close()
                return
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4: end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            self.handle(head, body)

    def handle(self, head: bytes, body: bytes) -> None:
        line = head[: head.find(b"\r\n")] if b"\r\n" in head else head
        method, _, rest = line.partition(b" ")
        path = rest.partition(b" ")[0]
        if method != b"POST" or not path.endswith(b"/chat/completions"):
            other = next((answer for end, answer in OTHER_RESPONSES if path.endswith(end)), None) if method == b"POST" else None
            self.transport.write(other or NOT_FOUND)  # type: ignore[union-attr]
            return
        try:
            request = _decode_request(body)
        except msgspec.DecodeError:
            self.transport.write(BAD_REQUEST)  # type: ignore[union-attr]
            self.transport.close()  # type: ignore[union-attr]
            return
        if not request.stream:
            self.transport.write(JSON_RESPONSE)  # type: ignore[union-attr]
            return
        chunks, gap = self.defaults
        match = _STREAM_MODEL.search(request.model)
        if match:
            chunks, gap = int(match[1]), int(match[2]) / 1000
        self.streaming = asyncio.ensure_future(self.stream(frames_for(chunks), gap))

    async def stream(self, frames: list[bytes], gap: float) -> None:
        transport = self.transport
        assert transport is not None
        transport.write(STREAM_HEAD + frames[0])
        # Paced against a fixed schedule, so the gaps do not drift with the loop's load.
        start = time.monotonic()
        for index, frame in enumerate(frames[1:], 1):
            if gap:
                delay = start + index * gap - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            if self.transport is None:
                return
            transport.write(frame)
        self.streaming = None
        if self.buffer:  # a request that arrived while streaming (not expected, but keep the order)
            self.data_received(b"")


async def serve(host: str, port: int, chunks: int, gap: float, ready: str | None = None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: UpstreamProtocol((chunks, gap)), host, port, backlog=4096,
                                      reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname()[1]
    print(f"bench upstream on http://{host}:{bound} (pid {os.getpid()})", flush=True)
    if ready:
        with open(ready, "w") as f:
            f.write(str(bound))
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--chunks", type=int, default=50, help="SSE chunks per streamed answer")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="milliseconds between streamed chunks")
    parser.add_argument("--ready-file", help="write the bound port here once listening")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    run(serve(args.host, args.port, args.chunks, args.gap_ms / 1000, args.ready_file))


if __name__ == "__main__":
    main()
