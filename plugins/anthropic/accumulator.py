"""The native endpoint's stream, both ways: assembled into a ``message`` and replayed from one.

:class:`MessagesAccumulator` assembles a streamed Messages answer in the shape of a non-streamed one:
``{"type": "message", "content": [blocks...], "stop_reason", "stop_sequence", "usage"}``, every content
block (text with its citations, tool use with its parsed input, thinking with its signature, and any
other block as it started), the usage in Anthropic's shape (``message_start``'s, with the counts of
``message_delta`` over it). Observers that need the answer (``needs_answer``) read it, and a response
cache stores it. The same events come from Anthropic itself and from the core's translation of a chat
provider's stream (``respan_gateway.translate.messages``), so both are logged and cached alike.

:func:`replay` is the other way: the events that stream a stored ``message`` again, as Anthropic
streams it (``message_start``, each block's start, delta and stop, ``message_delta``, ``message_stop``).
"""

from __future__ import annotations

from typing import Any

import msgspec

from respan_gateway import Call, Chunk, TextPieces

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode


# Typed views of what the accumulator reads from events: decoding only these fields is cheap.
class _Message(msgspec.Struct):
    id: str | None = None
    model: str | None = None
    role: str | None = None
    usage: dict[str, Any] | None = None


class _Delta(msgspec.Struct):
    type: str | None = None
    text: str | None = None
    partial_json: str | None = None
    thinking: str | None = None
    signature: str | None = None
    citation: Any = None
    stop_reason: str | None = None
    stop_sequence: str | None = None


class _Event(msgspec.Struct):
    type: str | None = None
    index: int = 0
    message: _Message | None = None
    content_block: dict[str, Any] | None = None
    delta: _Delta | None = None
    usage: dict[str, Any] | None = None


_decode_event = msgspec.json.Decoder(_Event).decode


class _Block:
    """One content block as it is assembled: its start, and the fragments of its deltas."""

    __slots__ = ("start", "text", "json", "thinking", "signature", "citations")

    def __init__(self, start: dict[str, Any]) -> None:
        self.start = start
        self.text = TextPieces()
        self.json = TextPieces()
        self.thinking = TextPieces()
        self.signature: str | None = None
        self.citations: list[Any] = []

    def block(self) -> dict[str, Any]:
        block = dict(self.start)
        if self.text:
            block["text"] = block.get("text", "") + str(self.text)
        if self.json:
            try:
                block["input"] = _decode(str(self.json))
            except msgspec.DecodeError:
                block["input"] = {}
        if self.thinking:
            block["thinking"] = block.get("thinking", "") + str(self.thinking)
        if self.signature is not None:
            block["signature"] = self.signature
        if self.citations:
            block["citations"] = [*(block.get("citations") or []), *self.citations]
        return block


class MessagesAccumulator:
    """A :class:`respan_gateway.Accumulator` for ``POST /api/anthropic/v1/messages`` streams."""

    __slots__ = ("id", "model", "blocks", "stop_reason", "stop_sequence", "usage")

    def __init__(self) -> None:
        self.id: str | None = None
        self.model: str | None = None
        self.blocks: dict[int, _Block] = {}
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self.usage: dict[str, Any] | None = None

    def feed(self, chunk: Chunk) -> None:
        try:
            event = _decode_event(chunk.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # an event we cannot read is relayed all the same
        kind = event.type
        if kind == "message_start" and event.message is not None:
            self.id, self.model = event.message.id, event.message.model
            self.usage = dict(event.message.usage or {})
        elif kind == "content_block_start" and event.content_block is not None:
            self.blocks[event.index] = _Block(event.content_block)
        elif kind == "content_block_delta" and event.delta is not None:
            block = self.blocks.get(event.index)
            if block is None:  # a delta without its start: a text block, as the delta says
                block = self.blocks[event.index] = _Block({"type": "text", "text": ""})
            delta = event.delta
            if delta.text:
                block.text.add(delta.text)
            if delta.partial_json:
                block.json.add(delta.partial_json)
            if delta.thinking:
                block.thinking.add(delta.thinking)
            if delta.signature is not None:
                block.signature = delta.signature
            if delta.citation is not None:
                block.citations.append(delta.citation)
        elif kind == "message_delta":
            if event.delta is not None:
                if event.delta.stop_reason:
                    self.stop_reason = event.delta.stop_reason
                if event.delta.stop_sequence:
                    self.stop_sequence = event.delta.stop_sequence
            if event.usage:  # cumulative counts: they replace the start's
                self.usage = {**(self.usage or {}), **{k: v for k, v in event.usage.items() if v is not None}}

    def text(self) -> str:
        return "".join(str(b.text) for _, b in sorted(self.blocks.items()))

    def answer(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": [b.block() for _, b in sorted(self.blocks.items())],
            "stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence,
        }
        if self.usage is not None:
            body["usage"] = self.usage
        return body


#: Stop reasons of a message a response cache may store: the model's whole turn (``max_tokens`` is what
#: the request's own limit gives again); not ``refusal`` (a safety decision) nor ``pause_turn`` (a
#: server tool's turn left open, to be continued).
CACHEABLE_STOP_REASONS = frozenset({"end_turn", "max_tokens", "stop_sequence", "tool_use"})


def cacheable(answer: Any) -> bool:
    """Whether a complete ``message`` may be stored by a response cache."""
    return isinstance(answer, dict) and answer.get("type") == "message" and answer.get("stop_reason") in CACHEABLE_STOP_REASONS


def _event(data: dict[str, Any]) -> Chunk:
    return Chunk(_encode(data), data["type"])


def replay(message: dict[str, Any], call: Call) -> list[Chunk]:
    """The stream events of ``message`` (a non-streamed Messages answer, or an assembled one): what the
    ``anthropic`` SDK's stream helpers assemble from them is ``message`` again."""
    usage = dict(message.get("usage") or {})
    start = {k: v for k, v in message.items() if k not in ("content", "stop_reason", "stop_sequence", "usage")}
    chunks = [_event({"type": "message_start", "message": {
        **start, "type": "message", "role": message.get("role", "assistant"), "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 0} if usage else {},
    }})]
    for index, block in enumerate(message.get("content") or ()):
        kind = block.get("type")
        deltas: list[dict[str, Any]] = []
        if kind == "text":
            head = {k: v for k, v in block.items() if k not in ("text", "citations")}
            head["text"] = ""
            if block.get("citations") is not None:
                head["citations"] = []
            deltas += [{"type": "citations_delta", "citation": c} for c in block.get("citations") or ()]
            if block.get("text"):
                deltas.append({"type": "text_delta", "text": block["text"]})
        elif kind in ("tool_use", "server_tool_use"):
            head = {**block, "input": {}}
            if block.get("input"):
                deltas.append({"type": "input_json_delta", "partial_json": _encode(block["input"]).decode()})
        elif kind == "thinking":
            head = {**block, "thinking": "", "signature": ""}
            if block.get("thinking"):
                deltas.append({"type": "thinking_delta", "thinking": block["thinking"]})
            if block.get("signature"):
                deltas.append({"type": "signature_delta", "signature": block["signature"]})
        else:  # redacted thinking, tool results...: whole in their start, as Anthropic sends them
            head = block
        chunks.append(_event({"type": "content_block_start", "index": index, "content_block": head}))
        chunks += [_event({"type": "content_block_delta", "index": index, "delta": d}) for d in deltas]
        chunks.append(_event({"type": "content_block_stop", "index": index}))
    chunks.append(_event({
        "type": "message_delta",
        "delta": {"stop_reason": message.get("stop_reason"), "stop_sequence": message.get("stop_sequence")},
        "usage": usage or {"output_tokens": 0},
    }))
    chunks.append(_event({"type": "message_stop"}))
    return chunks


__all__ = ["CACHEABLE_STOP_REASONS", "MessagesAccumulator", "cacheable", "replay"]
