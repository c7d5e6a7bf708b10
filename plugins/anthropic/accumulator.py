"""The native endpoint's accumulator: a streamed Messages answer assembled into a ``message``.

Observers that need the answer (``needs_answer``) read a streamed call's answer in the same shape as a
non-streamed one: ``{"type": "message", "content": [blocks...], "stop_reason", "usage"}``, with its
``text``, ``thinking`` and ``tool_use`` blocks (a tool's ``input`` parsed from its ``input_json_delta``
fragments), the usage in Anthropic's shape (``message_start``'s, with the counts of ``message_delta``
over it). The same events come from Anthropic itself and from the core's translation of a chat
provider's stream, so both are logged alike.
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


class _Block(msgspec.Struct):
    type: str | None = None
    text: str | None = None
    id: str | None = None
    name: str | None = None


class _Delta(msgspec.Struct):
    type: str | None = None
    text: str | None = None
    thinking: str | None = None
    partial_json: str | None = None
    stop_reason: str | None = None
    stop_sequence: str | None = None


class _Event(msgspec.Struct):
    type: str | None = None
    index: int = 0
    message: _Message | None = None
    content_block: _Block | None = None
    delta: _Delta | None = None
    usage: dict[str, Any] | None = None


_decode_event = msgspec.json.Decoder(_Event).decode


class MessagesAccumulator:
    """A :class:`respan_gateway.Accumulator` for ``POST /api/anthropic/v1/messages`` streams."""

    __slots__ = ("id", "model", "blocks", "parts", "stop_reason", "stop_sequence", "usage")

    def __init__(self) -> None:
        self.id: str | None = None
        self.model: str | None = None
        # Content blocks by index: [type, text, id, name] (text: the text, thinking or tool-input JSON).
        self.blocks: dict[int, list[Any]] = {}
        self.parts: list[str] = []  # the answer's text (for token estimates)
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self.usage: dict[str, Any] | None = None

    def feed(self, chunk: Chunk) -> None:
        try:
            event = _decode_event(chunk.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # an event we cannot read is relayed all the same
        if event.type == "message_start" and event.message is not None:
            self.id, self.model = event.message.id, event.message.model
            self.usage = dict(event.message.usage or {})
        elif event.type == "content_block_start" and event.content_block is not None:
            block = event.content_block
            self.blocks[event.index] = [block.type, block.text or "", block.id, block.name]
        elif event.type == "content_block_delta" and event.delta is not None:
            delta = event.delta
            block = self.blocks.setdefault(event.index, ["text", "", None, None])
            piece = delta.text if delta.type == "text_delta" else delta.thinking if delta.type == "thinking_delta" \
                else delta.partial_json if delta.type == "input_json_delta" else None
            if piece:
                block[1] += piece
                if delta.type == "text_delta":
                    self.parts.append(piece)
        elif event.type == "message_delta":
            if event.delta is not None and event.delta.stop_reason:
                self.stop_reason, self.stop_sequence = event.delta.stop_reason, event.delta.stop_sequence
            if event.usage and self.usage is not None:  # cumulative counts: they replace the start's
                self.usage.update({k: v for k, v in event.usage.items() if v is not None})

    def text(self) -> str:
        return "".join(self.parts)

    def content(self) -> list[dict[str, Any]]:
        blocks = []
        for index in sorted(self.blocks):
            kind, text, block_id, name = self.blocks[index]
            if kind == "tool_use":
                try:
                    tool_input = msgspec.json.decode(text) if text else {}
                except msgspec.DecodeError:
                    tool_input = text  # a cut stream: the fragments as they came
                blocks.append({"type": "tool_use", "id": block_id, "name": name, "input": tool_input})
            elif kind == "thinking":
                blocks.append({"type": "thinking", "thinking": text})
            elif kind == "text" and text:
                blocks.append({"type": "text", "text": text})
        return blocks

    def answer(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": self.content(), "stop_reason": self.stop_reason,
        }
        if self.stop_sequence is not None:
            body["stop_sequence"] = self.stop_sequence
        if self.usage is not None:
            body["usage"] = self.usage
        return body


__all__ = ["MessagesAccumulator"]
