"""Declared pipeline endpoints: what an endpoint is, for the core and for plugins.

An :class:`Endpoint` says which ``kind`` of call its paths make, how its request is read and how its
errors and streams are written. The core declares chat completions and embeddings; plugins declare
theirs (the native Anthropic endpoint, the Responses API) through ``register_endpoints``. Every
endpoint runs the same pipeline, so every feature works on each of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Literal, Protocol

import msgspec

from .call import Call, Chunk
from .errors import GatewayError
from .cost import Usage

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

    # Optional, for a stage that adds ``{name: value}`` to the end of a stream (``request_breakdown``):
    # ``holds(chunk) -> bool``, whether the chunk is the answer's last event, to be held back and given
    # to ``annex``; ``annex(name, value, held) -> list[Chunk]``, what ends the stream instead: the held
    # event carrying the field (Responses: the SDKs validate every event against its known types), or
    # one more event after it (chat's ``request_breakdown`` chunk). Valid for the endpoint's strict SDKs.
    # An endpoint whose accumulator has no ``annex`` takes no addition on its streams.


class TextPieces:
    """A streamed text as an accumulator gathers it, piece by piece. Every 16 pieces are joined into
    one string, so that a long stream holds its characters (about a byte each) and one string object
    per 16 chunks, not one per chunk (~60 bytes for a word): the memory of an open stream grows by the
    text it has received. (Joining what was joined again would copy the whole text every few chunks.)"""

    __slots__ = ("_joined", "_tail")

    JOIN_EVERY = 16

    def __init__(self) -> None:
        self._joined: list[str] = []
        self._tail: list[str] = []

    def add(self, piece: str) -> None:
        tail = self._tail
        tail.append(piece)
        if len(tail) >= self.JOIN_EVERY:
            self._joined.append("".join(tail))
            tail.clear()

    def __bool__(self) -> bool:
        return bool(self._tail or self._joined)

    def __str__(self) -> str:
        return "".join(self._joined) + "".join(self._tail)


class ChatTranslation(Protocol):
    """How a call of an endpoint is served by a provider adapter that speaks only chat completions.

    The core's dispatch uses it when the target's adapter has no method for the call's ``kind`` but has
    ``chat``: ``request`` gives the OpenAI chat body the adapter is called with (``call.body`` is that
    body while the adapter's ``chat`` runs, then the endpoint's own again; the model is the target's);
    the adapter's answer comes back through ``answer`` (a ``chat.completion``) or ``stream`` (its
    ``chat.completion.chunk`` chunks, to be re-framed as the endpoint streams). So a third-party
    provider that speaks chat serves every endpoint that declares a translation. A field the
    translation cannot honour is a ``BadRequest`` from ``request``, naming it.
    """

    def request(self, call: Call) -> dict[str, Any]:
        """The chat-completions body for this call (Respan params already out of ``call.body``)."""

    def answer(self, completion: dict[str, Any], call: Call) -> Any:
        """The endpoint's non-stream answer from a ``chat.completion``."""

    def stream(self, chunks: AsyncIterator[Chunk], call: Call) -> AsyncIterator[Chunk]:
        """The endpoint's stream from the chat chunks (it must ``aclose`` ``chunks`` when it ends early)."""


class StreamContinuation(Protocol):
    """One stream of an endpoint, watched so that it can be continued on another model if it breaks.

    The reliability stage makes one per stream (``Endpoint.continuation``) and feeds it every chunk
    before the client gets it. When the stream breaks after chunks reached the client and
    :meth:`resumable` is true, it asks :meth:`request` for the continuation's request (the
    conversation plus :meth:`prefill`, the text delivered so far, as a trailing assistant message),
    calls :meth:`resume`, and feeds the continuation's chunks through the same object, which turns
    them into the rest of the one answer the client is reading (no second role delta, no text
    repeated, one id, the usage of every attempt).
    """

    def feed(self, chunk: Chunk) -> Chunk | None:
        """The chunk as the client gets it (None: nothing to send)."""

    def resumable(self) -> bool:
        """Whether what the client has can be continued: text only (no tool call, no reasoning), no finish."""

    def prefill(self) -> str:
        """The answer's text the client has received so far."""

    def request(self, call: Call, body: dict[str, msgspec.Raw]) -> None:
        """Make ``call.body`` the continuation's request: ``body`` (the request as the endpoint had it)
        with :meth:`prefill` as a trailing assistant message."""

    def resume(self, prior: Usage | None) -> None:
        """The chunks fed from now on are a continuation's; ``prior``: the usage of the attempts
        before it, added to the continuation's usage."""


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
    ``via_chat``: a :class:`ChatTranslation`, so that providers that speak only chat serve it too.

    For a response cache (the ``cache`` plugin reads these, knowing no endpoint by name):

    ``replay(answer, call)``: the chunks of a stream re-sending a complete answer of this endpoint (its
    non-stream shape, as a non-streamed call answers it or the ``accumulator`` assembles it) as this
    endpoint streams, for ``call`` (e.g. the usage chunk only when it asks for one); what the SDKs'
    stream helpers assemble from them is that answer. None: the endpoint does not stream (embeddings),
    or cannot replay, and a cache answers none of its streamed calls.
    ``cacheable(answer)``: whether a complete answer may be stored (e.g. not one a content filter
    stopped); None: every successful (2xx) answer may.
    ``key_headers``: request headers (lower-case) that change the answer, so are part of a cache key
    along with the body (Anthropic's ``anthropic-beta``).
    ``stream_done``: what ends a complete stream (default: ``data: [DONE]`` in the OpenAI style,
    nothing in Anthropic's); ``stream_error``: the event that ends a stream after a failure, from the
    error and the call (``call.outcome.chunks`` events were sent before it; default: the style's error
    event).
    ``max_tokens_fields``: the body fields that bound the tokens an answer may generate, the first one
    present wins (read by :meth:`max_output_tokens`, e.g. for a budget's estimate of a request's
    cost); empty when the endpoint generates no tokens (embeddings).
    ``first_token``: whether a chunk of its stream carries the answer's first token (text, a tool
    call, reasoning, a finish), for the time-to-first-token limit; None: its first chunk does.
    ``continuation``: makes a :class:`StreamContinuation` per stream, so that a stream broken after
    its first chunk can be continued on another model (None: it cannot; the stream ends with an error
    event).
    """

    kind: str
    paths: tuple[str, ...]
    style: ErrorStyle = "openai"
    prepare: Callable[[Call], None] | None = None
    accumulator: Callable[[], Accumulator] | None = None
    own_fields: frozenset[str] = frozenset()
    via_chat: ChatTranslation | None = None
    replay: Callable[[Any, Call], list[Chunk] | Iterable[Chunk]] | None = None
    cacheable: Callable[[Any], bool] | None = None
    key_headers: tuple[str, ...] = ()
    stream_done: bytes | None = None
    stream_error: Callable[[GatewayError, Call], Chunk] | None = None
    max_tokens_fields: tuple[str, ...] = ("max_completion_tokens", "max_tokens", "max_output_tokens")
    first_token: Callable[[Chunk], bool] | None = None
    continuation: Callable[[Call], StreamContinuation] | None = None

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

__all__ = ["Accumulator", "ChatTranslation", "Endpoint", "ErrorStyle", "StreamContinuation"]
