"""Declared pipeline endpoints: what an endpoint is, for the core and for plugins.

An :class:`Endpoint` says which ``kind`` of call its paths make, how its request is read and how its
errors and streams are written. The core declares chat completions and embeddings; plugins declare
theirs (the native Anthropic endpoint, the Responses API) through ``register_endpoints``. Every
endpoint runs the same pipeline, so every feature works on each of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Literal, Protocol

import msgspec

from .call import Call, Chunk
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
    first_token: Callable[[Chunk], bool] | None = None
    continuation: Callable[[Call], StreamContinuation] | None = None


__all__ = ["Accumulator", "ChatTranslation", "Endpoint", "ErrorStyle", "StreamContinuation"]
