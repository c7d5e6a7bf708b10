"""The native endpoint's accumulator: a streamed Messages answer assembled into a ``message``.

Observers that need the answer (``needs_answer``) read a streamed call's answer in the same shape as a
non-streamed one: ``{"type": "message", "content": [text blocks...], "stop_reason", "usage"}``, the
usage in Anthropic's shape (``message_start``'s, with the counts of ``message_delta`` over it).
"""

from __future__ import annotations

from typing import Any

import msgspec

from respan_gateway import Chunk


# Typed views of what the accumulator reads from events: decoding only these fields is cheap.
class _Message(msgspec.Struct):
    id: str | None = None
    model: str | None = None
    usage: dict[str, Any] | None = None


class _Delta(msgspec.Struct):
    type: str | None = None
    text: str | None = None
    stop_reason: str | None = None


class _Event(msgspec.Struct):
    type: str | None = None
    message: _Message | None = None
    delta: _Delta | None = None
    usage: dict[str, Any] | None = None


_decode_event = msgspec.json.Decoder(_Event).decode


class MessagesAccumulator:
    """A :class:`respan_gateway.Accumulator` for ``POST /api/anthropic/v1/messages`` streams."""

    __slots__ = ("id", "model", "parts", "stop_reason", "usage")

    def __init__(self) -> None:
        self.id: str | None = None
        self.model: str | None = None
        self.parts: list[str] = []
        self.stop_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def feed(self, chunk: Chunk) -> None:
        try:
            event = _decode_event(chunk.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # an event we cannot read is relayed all the same
        if event.type == "message_start" and event.message is not None:
            self.id, self.model = event.message.id, event.message.model
            self.usage = dict(event.message.usage or {})
        elif event.type == "content_block_delta" and event.delta is not None and event.delta.text:
            self.parts.append(event.delta.text)
        elif event.type == "message_delta":
            if event.delta is not None and event.delta.stop_reason:
                self.stop_reason = event.delta.stop_reason
            if event.usage and self.usage is not None:  # cumulative counts: they replace the start's
                self.usage.update({k: v for k, v in event.usage.items() if v is not None})

    def text(self) -> str:
        return "".join(self.parts)

    def answer(self) -> dict[str, Any]:
        text = self.text()
        body: dict[str, Any] = {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": [{"type": "text", "text": text}] if text else [], "stop_reason": self.stop_reason,
        }
        if self.usage is not None:
            body["usage"] = self.usage
        return body


__all__ = ["MessagesAccumulator"]
