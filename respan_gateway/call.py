"""The call object every middleware receives, and the two kinds of result it returns.

A :class:`Call` is built once per request by the endpoint and carries everything later stages read as
typed fields: the endpoint kind, the raw body bytes and the body as a dict of still-encoded values
(``msgspec.Raw``: decoded only where a stage needs one), the merged Respan params, who is calling,
where the request goes (``target``) and what each stage decided.

A result is a :class:`JSONResult` (a complete answer) or a :class:`StreamResult` (an async iterator of
:class:`Chunk`, each the payload of one server-sent event). Middlewares that need to see a stream wrap
its iterator; nothing buffers a stream.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import msgspec

from .errors import GatewayError
from .outcome import Outcome
from .params import NESTED_PARAM_OBJECTS, PARAM_NAMES, RespanParams

#: The bundled endpoint kinds; a plugin may declare others (``respan_gateway.Endpoint``).
Kind = Literal["chat", "embeddings", "responses", "anthropic_messages"]

_decode = msgspec.json.decode
_encode = msgspec.json.Encoder().encode


class KeyLimits(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The limits of one gateway API key (``[auth] keys[].limits`` or the keys API); the ``limits``
    plugin enforces them. Spend in USD; None = no limit of that kind."""

    max_spend: float | None = None  # lifetime
    spend_per_hour: float | None = None
    spend_per_day: float | None = None
    spend_per_month: float | None = None
    requests_per_minute: int | None = None
    requests_per_hour: int | None = None
    requests_per_day: int | None = None
    requests_per_month: int | None = None
    tokens_per_hour: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None


class Principal(msgspec.Struct, kw_only=True, frozen=True):
    """Who is calling: the gateway API key's tenant, id and environment. ``key_id`` is stable and unique
    per key: a config key's ``name`` (else the first 8 hex digits of its hash), a database key's id."""

    tenant: str = "default"
    key_id: str | None = None
    environment: Literal["production", "test"] = "production"
    # An admin key (``admin = true`` in [auth], or created as one): may use the keys API and sign in to
    # the dashboard, both of its tenant only.
    admin: bool = False
    # The key's limits (None: none set); counted per ``key_id`` by the limits plugin.
    limits: KeyLimits | None = None


ANONYMOUS = Principal()


class Target(msgspec.Struct, kw_only=True):
    """Where one attempt goes: a configured provider, the model name it knows, and credentials."""

    provider: str
    # The slug as the client named it (or as routing chose it) and the provider's own model name.
    model: str
    upstream_model: str
    api_key: str | None = None
    base_url: str | None = None
    # Provider-specific credential fields (api_version, ...), from credential_override / customer_credentials.
    extra: dict[str, Any] = {}
    deployment: str | None = None


class Attempt(msgspec.Struct, kw_only=True):
    """One upstream attempt, for the log record's ``warnings``."""

    model: str
    provider: str
    deployment: str | None = None
    status: int | None = None
    error: str | None = None
    duration: float = 0.0
    # A continuation of a broken stream: the characters of delivered text it was sent as an assistant prefill.
    prefill: int | None = None


class Chunk(msgspec.Struct):
    """One server-sent event: its JSON payload, and an event name where the wire format uses them."""

    data: bytes
    event: str | None = None
    #: The decoded payload when a reader already decoded ``data`` whole (so it is valid JSON), in the
    #: type that reader's module defines (the OpenAI adapter's chat stream: ``openai_chat.ChatChunk``);
    #: None: not decoded. Later readers reuse it instead of decoding again; a rewrite makes a new
    #: Chunk, which drops it.
    parsed: Any = None

    def json(self) -> Any:
        return _decode(self.data)


class JSONResult:
    """A complete answer. ``content`` holds the encoded body; ``data`` decodes it once, on demand.

    A middleware that changes the answer assigns ``data``; the body is then encoded again when sent.
    """

    __slots__ = ("status", "headers", "_content", "_data")

    def __init__(self, status: int = 200, content: bytes = b"", *, data: Any = None, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.headers = headers if headers is not None else {}
        self._content: bytes | None = content if data is None else None
        self._data = data

    @property
    def data(self) -> Any:
        if self._data is None:
            self._data = _decode(self._content) if self._content else None
        return self._data

    @data.setter
    def data(self, value: Any) -> None:
        self._data = value
        self._content = None

    @property
    def content(self) -> bytes:
        if self._content is None:
            self._content = _encode(self._data)
        return self._content


class StreamResult:
    """A streamed answer: ``chunks`` yields :class:`Chunk` as the provider sends them.

    The iterator may raise a :class:`~respan_gateway.errors.GatewayError` at any point; before the
    first chunk that is an ordinary error response, after it the endpoint ends the stream with an
    error event. Whoever consumes the iterator must ``aclose()`` it (the endpoint does), which
    closes the upstream request.
    """

    __slots__ = ("status", "headers", "chunks")

    def __init__(self, chunks: AsyncIterator[Chunk], *, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.headers = headers if headers is not None else {}
        self.chunks = chunks


Result = JSONResult | StreamResult


async def aclose(chunks: AsyncIterator[Any], *, quiet: bool = False) -> None:
    """Close a stream's iterator (an async generator's ``aclose``), which closes the upstream request:
    the one way every stage that wraps or drops a stream closes the stream it holds. ``quiet``: an
    ``Exception`` raised while closing is swallowed (for a stage that is already ending another way)."""
    close = getattr(chunks, "aclose", None)
    if close is None:
        return
    try:
        await close()
    except Exception:
        if not quiet:
            raise


class Timings(msgspec.Struct, kw_only=True):
    """perf_counter() marks; durations derive from them."""

    start: float = msgspec.field(default_factory=time.perf_counter)
    # Wall-clock start, for the log record.
    started_at: float = msgspec.field(default_factory=time.time)
    upstream_start: float | None = None
    # The pipeline returned its answer (a stream's head) or raised its error (set by the core).
    answered: float | None = None
    # Streams: the first chunk reached the endpoint (set by the core).
    first_byte: float | None = None
    end: float | None = None


class Call(msgspec.Struct, kw_only=True):
    """One request on its way through the pipeline."""

    kind: str
    request_id: str
    headers: Any  # starlette.datastructures.Headers (case-insensitive)
    raw_body: bytes
    # Top-level body fields, still encoded. Stages pop/replace entries; `body_changed` says so.
    body: dict[str, msgspec.Raw]
    body_changed: bool = False
    params: RespanParams = msgspec.field(default_factory=RespanParams)
    # True once the Respan params have left the body (the params stage, else the core before a
    # provider call: see respan_gateway.params.strip_params).
    params_collected: bool = False
    # Body fields the endpoint's wire format owns even where a Respan param has the name (Endpoint.own_fields).
    own_fields: frozenset[str] = frozenset()
    principal: Principal = ANONYMOUS
    # The requested model (None when the request names none, e.g. a load-balance group decides).
    model: str | None = None
    stream: bool = False
    # Set by routing for each attempt; resolved from `model` by the core when nobody set it.
    target: Target | None = None
    # Routing's ordered candidates (primary first, then fallbacks); reliability walks them.
    candidates: list[Target] = []
    attempts: list[Attempt] = []
    beta_flags: frozenset[str] = frozenset()
    timings: Timings = msgspec.field(default_factory=Timings)
    # Headers to add to the client's response (x-respan-log-id, x-respan-cache, ...).
    response_headers: dict[str, str] = {}
    # Headers a stage adds to the upstream request of the next attempt (the trace context of tracing:
    # `traceparent`), whatever the provider: ProviderAdapter.request_headers merges them after the
    # client's `extra_headers` and before the adapter's own (credentials); a forbidden one is dropped.
    upstream_headers: dict[str, str] = {}
    # A request the gateway cannot read (body not a JSON object, mistyped `model`): a GatewayError raised
    # by the first stage that reads the body (params, else the core's dispatch), so that earlier stages
    # (auth, logging) still run and a rejected request is logged like any other.
    rejection: GatewayError | None = None
    # What happened: usage, cost, cache, limits, prompt (see respan_gateway.outcome); observers read it.
    outcome: Outcome = msgspec.field(default_factory=Outcome)
    # Free-form notes of third-party plugins; bundled plugins meet through the typed fields above.
    state: dict[str, Any] = {}
    # Called once each when the call has ended (Gateway.finish: the answer sent, or the stream ended,
    # however), before the observers: what a stage holds open for a stream (a gauge, a slot) is let go
    # there, without a generator around every chunk.
    on_finish: list[Callable[[], None]] = []

    def get(self, key: str, default: Any = None) -> Any:
        """A body field, decoded (``default`` when absent)."""
        raw = self.body.get(key)
        return default if raw is None else _decode(raw)

    def set(self, key: str, value: Any) -> None:
        """Replace (or add) a body field; the body is then re-encoded for the upstream."""
        self.body[key] = msgspec.Raw(_encode(value))
        self.body_changed = True

    def pop(self, key: str) -> Any:
        raw = self.body.pop(key, None)
        if raw is None:
            return None
        self.body_changed = True
        return _decode(raw)

    def prompt(self) -> Any:
        """The request's ``messages`` (chat, Anthropic Messages), else its ``input`` (embeddings,
        Responses), decoded; None when it has neither or it cannot be read. A Responses request reads
        as the chat conversation it is (``respan_gateway.translate.responses.readable_messages``:
        ``instructions`` first as the system message, its items as messages), so that token estimates
        and logs read every endpoint alike; a string ``input`` alone stays a string."""
        raw = self.body.get("messages") or self.body.get("input")
        if raw is None:
            return None
        try:
            prompt = _decode(raw)
            if "messages" in self.body:
                return prompt
            instructions = self.body.get("instructions")
            items = isinstance(prompt, list) and bool(prompt) and all(isinstance(i, dict) for i in prompt)
            if instructions is None and not items:
                return prompt  # embeddings' strings or token ids, a bare string input
            from .translate.responses import readable_messages  # the translation imports this module

            return readable_messages(_decode(instructions) if instructions is not None else None, prompt)
        except msgspec.DecodeError:
            return None

    def request_without_params(self, **replaced: msgspec.Raw) -> msgspec.Raw | None:
        """The request body less every Respan param (credentials never reach a log or an answer);
        None for a body the gateway could not read (its params cannot be stripped). ``replaced``: the
        JSON of fields written instead of the request's (where the body has them), e.g. a record
        that keeps a field elsewhere."""
        if self.rejection is not None:
            return None
        if not replaced and not any(k in PARAM_NAMES or k in NESTED_PARAM_OBJECTS for k in self.body):
            return msgspec.Raw(self.encoded_body())
        return msgspec.Raw(_encode({k: replaced.get(k, v) for k, v in self.body.items()
                                    if k not in PARAM_NAMES and k not in NESTED_PARAM_OBJECTS}))

    def encoded_body(self, **overrides: Any) -> bytes:
        """The body to send upstream: the original bytes when nothing changed, else re-encoded."""
        if not overrides and not self.body_changed:
            return self.raw_body
        if not overrides:
            return _encode(self.body)
        body = dict(self.body)
        for key, value in overrides.items():
            body[key] = msgspec.Raw(_encode(value))
        return _encode(body)


CallNext = Callable[[Call], Awaitable[Result]]
