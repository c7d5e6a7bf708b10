"""Server-sent events: the one reader (for upstream streams) and the one writer (for the client).

The reader follows the WHATWG event-stream rules that the OpenAI and Anthropic SDKs implement
(fields ``event``/``data``, comments ignored, one space after the colon stripped, several ``data``
lines joined with ``\\n``, an empty line dispatches). It yields raw payload bytes: decoding is left to
whoever needs the JSON.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from .call import Chunk

DONE = b"[DONE]"


async def read_events(source: AsyncIterable[bytes]) -> AsyncIterator[Chunk]:
    """Parse a byte stream into events. A trailing event without its blank line is dropped, per spec."""
    buffer = b""
    event: str | None = None
    data: list[bytes] = []
    async for piece in source:
        buffer += piece
        if b"\n" not in piece:
            continue
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data:
                    yield Chunk(data[0] if len(data) == 1 else b"\n".join(data), event)
                event, data = None, []
                continue
            if line[0] == 58:  # b":" comment / keep-alive
                continue
            name, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                data.append(value)
            elif name == b"event":
                event = value.decode("utf-8", "replace")


def frame(chunk: Chunk) -> bytes:
    """One event as it goes to the client; data of several lines (an upstream event of several
    ``data`` lines, joined by the reader) goes out as several ``data`` lines again."""
    data = chunk.data.replace(b"\n", b"\ndata: ") if b"\n" in chunk.data else chunk.data
    if chunk.event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + chunk.event.encode() + b"\ndata: " + data + b"\n\n"


DONE_FRAME = b"data: [DONE]\n\n"
