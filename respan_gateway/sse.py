"""Server-sent events: the one reader (for upstream streams) and the one writer (for the client).

The reader follows the WHATWG event-stream rules that the OpenAI and Anthropic SDKs implement
(fields ``event``/``data``, comments ignored, one space after the colon stripped, several ``data``
lines joined with ``\\n``, an empty line dispatches). It yields raw payload bytes: decoding is left to
whoever needs the JSON.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from .call import Chunk
from .config import UpstreamSettings
from .errors import UpstreamTooLarge

DONE = b"[DONE]"
_MAX_EVENT_BYTES = UpstreamSettings().max_event_bytes


async def read_events(
    source: AsyncIterable[bytes], max_event_bytes: int = _MAX_EVENT_BYTES, provider: str = ""
) -> AsyncIterator[Chunk]:
    """Parse a byte stream into events. A trailing event without its blank line is dropped, per spec.

    An event (or a line still waiting for its end) larger than ``max_event_bytes`` raises
    :class:`UpstreamTooLarge`: nothing from upstream is buffered without bound. Adapters call it
    through :meth:`ProviderAdapter.events`, which passes the configured limit.
    """
    buffer = b""
    event: str | None = None
    data: list[bytes] = []
    size = 0  # bytes of `data`
    async for piece in source:
        # The common piece: one whole event of one data line and nothing pending, read without the line
        # loop. (Not `in`, `find`, `startswith` on bytes here: each costs more than the slices; `in` first
        # tries its needle as an int and raises.)
        if not buffer and not data and event is None and piece[:6] == b"data: " and len(piece) <= max_event_bytes:
            line, _, rest = piece.partition(b"\n")
            if rest == b"\n" and line[-1:] != b"\r":
                yield Chunk(line[6:])
                continue
        buffer += piece
        if not piece.partition(b"\n")[1]:
            if len(buffer) > max_event_bytes:
                raise _too_large(max_event_bytes, provider)
            continue
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data:
                    yield Chunk(data[0] if len(data) == 1 else b"\n".join(data), event)
                event, data, size = None, [], 0
                continue
            if line[0] == 58:  # b":" comment / keep-alive
                continue
            name, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                size += len(value) + 1
                if size > max_event_bytes:
                    raise _too_large(max_event_bytes, provider)
                data.append(value)
            elif name == b"event":
                event = value.decode("utf-8", "replace")
        if len(buffer) > max_event_bytes:  # the start of a line longer than the limit
            raise _too_large(max_event_bytes, provider)


def _too_large(limit: int, provider: str) -> UpstreamTooLarge:
    return UpstreamTooLarge(
        f"provider `{provider}` sent a stream event larger than {limit} bytes ([upstream] max_event_bytes)",
        provider=provider,
    )


def frame(chunk: Chunk) -> bytes:
    """One event as it goes to the client; data of several lines (an upstream event of several
    ``data`` lines, joined by the reader) goes out as several ``data`` lines again."""
    data = chunk.data.replace(b"\n", b"\ndata: ")  # the same object when there is none
    if chunk.event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + chunk.event.encode() + b"\ndata: " + data + b"\n\n"


DONE_FRAME = b"data: [DONE]\n\n"
