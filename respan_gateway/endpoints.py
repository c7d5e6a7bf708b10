"""Declared pipeline endpoints: what an endpoint is, for the core and for plugins.

An :class:`Endpoint` says which ``kind`` of call its paths make, how its request is read and how its
errors and streams are written. The core declares chat completions and embeddings; plugins declare
theirs (the native Anthropic endpoint, the Responses API) through ``register_endpoints``. Every
endpoint runs the same pipeline, so every feature works on each of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol

import msgspec

from .call import Call, Chunk

#: The error envelope and stream framing of an endpoint: OpenAI's (``data:`` events ending with
#: ``[DONE]``, ``{"error": {...}}``) or Anthropic's (named events, ``{"type": "error", ...}``).
ErrorStyle = Literal["openai", "anthropic"]


class Accumulator(Protocol):
    """Assembles a streamed answer for the observers that need it (``needs_answer``)."""

    def feed(self, chunk: Chunk) -> None:
        """Take one chunk as it goes to the client (a chunk it cannot read is skipped)."""

    def answer(self) -> Any:
        """The answer so far, in the endpoint's non-stream shape (a ``chat.completion`` for chat)."""

    def text(self) -> str:
        """The completion text so far (for token estimates)."""


class Endpoint(msgspec.Struct, kw_only=True, frozen=True):
    """A pipeline endpoint.

    ``kind``: the call's kind (``chat``, ``embeddings``, ``responses``, ``anthropic_messages``, or a
    third party's); provider adapters serve a kind through the method of that name.
    ``paths``: every path it answers (aliases included), ``POST`` only.
    ``style``: its error envelope and stream framing.
    ``prepare``: called with the built call before the pipeline (defaults of the wire format, a
    param channel of its own); may raise a ``GatewayError``.
    ``accumulator``: makes an :class:`Accumulator` per streamed call, when an observer needs the answer.
    ``own_fields``: body fields that belong to this wire format even where a Respan param has the same
    name (Anthropic's ``metadata``), so they are not taken as Respan params.
    ``max_tokens_fields``: the body fields that bound the tokens an answer may generate, the first one
    present wins (read by :meth:`max_output_tokens`, e.g. for a budget's estimate of a request's
    cost); empty when the endpoint generates no tokens (embeddings).
    """

    kind: str
    paths: tuple[str, ...]
    style: ErrorStyle = "openai"
    prepare: Callable[[Call], None] | None = None
    accumulator: Callable[[], Accumulator] | None = None
    own_fields: frozenset[str] = frozenset()
    max_tokens_fields: tuple[str, ...] = ("max_completion_tokens", "max_tokens", "max_output_tokens")

    def max_output_tokens(self, call: Call) -> int | None:
        """The request's bound on generated tokens: the first of ``max_tokens_fields`` the body holds
        as a positive integer; None when it names none (0 when the endpoint generates no tokens)."""
        if not self.max_tokens_fields:
            return 0
        for name in self.max_tokens_fields:
            raw = call.body.get(name)
            if raw is None:
                continue
            try:
                value = _decode_int(raw)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if value is not None and value > 0:
                return value
        return None


_decode_int = msgspec.json.Decoder(int | None).decode

__all__ = ["Accumulator", "Endpoint", "ErrorStyle"]
