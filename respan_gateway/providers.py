"""Provider adapters and the model catalog.

A provider plugin registers adapter classes by type name (``register_providers``). Each
``[providers.<id>]`` table of the config makes one adapter instance of its ``type``. The adapter is the
terminal stage of the pipeline: it receives the :class:`~respan_gateway.call.Call` and the
:class:`~respan_gateway.call.Target` of this attempt, speaks the provider's API with the shared
upstream client, and returns the answer in the shape of the endpoint the client called (OpenAI chat
for ``chat``), as a :class:`JSONResult` or a :class:`StreamResult`. It reports failures by raising
:class:`~respan_gateway.errors.UpstreamError` (with the provider's status) and its subclasses, and
the normalised usage of its answer in ``call.outcome.usage``.

An adapter owns everything about its wire format: its credential headers (``credential_headers``),
its error bodies (:meth:`ProviderAdapter.error_fields`), its stream's end and error events (the hooks
of :meth:`ProviderAdapter.events`) and its usage shape. It receives an :class:`AdapterContext`, not the
gateway: the upstream settings, the shared client once the app runs, and the headers no client may set.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, ClassVar, Literal

import msgspec

from .call import Call, Chunk, Result, Target
from .config import ConfigError, ModelEntry, ProviderSettings, UpstreamSettings
from .errors import CONTEXT_LENGTH_EXCEEDED, BadRequest, GatewayError, ModelNotFound, StreamInterrupted, UpstreamError, UpstreamTooLarge, is_context_length_exceeded
from .sse import read_events
from .upstream import Timeout, TransportError, UpstreamClient, UpstreamResponse, parse_retry_after, timeout_for, transport_error

#: Headers no client may set upstream through the `extra_headers` param, whatever the provider. The
#: gateway adds every registered adapter's ``credential_headers`` at start-up (:func:`forbidden_headers`):
#: credentials come from the gateway's credential rules only.
HOP_BY_HOP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_decode = msgspec.json.decode

#: What an event of an upstream stream means to :meth:`ProviderAdapter.events`: ``end`` (the provider's
#: end marker, not relayed: OpenAI's ``[DONE]``, the gateway writes its own), ``last`` (the end marker,
#: relayed: Anthropic's ``message_stop``), ``complete`` (the answer is complete, e.g. a finish reason;
#: the stream may still carry usage before its end).
StreamMark = Literal["end", "last", "complete"]


def forbidden_headers(adapters: Iterable[type[ProviderAdapter]]) -> frozenset[str]:
    """The hop-by-hop headers and every adapter's credential headers, lower-cased."""
    names = set(HOP_BY_HOP_HEADERS)
    for adapter in adapters:
        names.update(h.lower() for h in adapter.credential_headers)
    return frozenset(names)


class AdapterContext:
    """What an adapter gets from the gateway: the ``[upstream]`` settings, the shared HTTP client (a
    callable: the client exists only while the app runs) and the headers no client may set."""

    __slots__ = ("upstream", "_client", "forbidden_headers")

    def __init__(self, upstream: UpstreamSettings, client: Callable[[], UpstreamClient],
                 forbidden_headers: frozenset[str] = HOP_BY_HOP_HEADERS) -> None:
        self.upstream = upstream
        self._client = client
        self.forbidden_headers = forbidden_headers

    @property
    def http(self) -> UpstreamClient:
        return self._client()


class ErrorFields(msgspec.Struct, kw_only=True):
    """What an error body says: message, and OpenAI's ``type``, ``param`` and ``code`` when it has them."""

    message: str = ""
    type: str | None = None
    param: str | None = None
    code: str | None = None


class ProviderAdapter:
    """Base class of provider adapters. Subclasses implement the endpoint kinds they serve.

    Class attributes:
      ``Settings``: the struct of this adapter's ``[providers.<id>]`` table (a ``ProviderSettings`` subclass).
      ``default_base_url``: used when the table has no ``base_url``.
      ``requires_key``: without a key (configured or from the request) the call is refused before
      anything is sent: 401 ``missing_provider_key``, which falls back like the provider's own 401.
    """

    Settings: ClassVar[type[ProviderSettings]] = ProviderSettings
    default_base_url: ClassVar[str] = ""
    # True for hosted APIs that refuse every request without a key (a local vLLM or Ollama needs none).
    requires_key: ClassVar[bool] = False
    #: The headers that carry this provider's credentials (lower case). No client may set one of any
    #: registered adapter through ``extra_headers``.
    credential_headers: ClassVar[frozenset[str]] = frozenset()
    #: The content type a streamed answer must have (:meth:`send` refuses any other with a 502).
    stream_content_type: ClassVar[str] = "text/event-stream"
    #: Capabilities of every model this adapter serves, added to a catalog entry's ``capabilities``
    #: (and the only ones of a ``<provider>/<model>`` slug without an entry): e.g. ``assistant_prefill``,
    #: a trailing assistant message is continued as it stands.
    capabilities: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, provider_id: str, settings: ProviderSettings, context: AdapterContext) -> None:
        self.id = provider_id
        self.settings = settings
        self.context = context
        self.base_url = (settings.base_url or self.default_base_url).rstrip("/")
        self._keys = [k.api_key for k in settings.keys] or ([settings.api_key] if settings.api_key else [])
        self._weights = [k.weight for k in settings.keys] or [1.0] * len(self._keys)
        # Every value of the `headers` table counts as a secret: operators put proxy credentials there
        # (Helicone-Auth, cf-aig-authorization...) under names no rule can tell from harmless ones.
        self._secrets = (*self._keys, *settings.headers.values())
        self.timeout = timeout_for(context.upstream, settings.connect_timeout, settings.read_timeout)

    # -- life cycle -------------------------------------------------------------------------------
    async def startup(self) -> None:
        """Called once per process before the first request."""

    async def shutdown(self) -> None:
        """Called once per process at shutdown."""

    # -- endpoint kinds ---------------------------------------------------------------------------
    async def chat(self, call: Call, target: Target) -> Result:
        raise BadRequest(f"provider `{self.id}` does not serve chat completions", param="model")

    async def embeddings(self, call: Call, target: Target) -> Result:
        raise BadRequest(f"provider `{self.id}` does not serve embeddings", param="model")

    # An adapter serves another endpoint kind (``responses``, ``anthropic_messages``) with a method of
    # that name; without one, an endpoint that declares a chat translation is served through ``chat``.

    # -- helpers for subclasses -------------------------------------------------------------------
    @property
    def http(self) -> UpstreamClient:
        """The shared upstream client (:class:`~respan_gateway.upstream.UpstreamClient`); adapters send
        through :meth:`send`, which adds the call's timeouts and the error mapping."""
        return self.context.http

    def api_key(self, target: Target) -> str | None:
        """The key for this attempt: the target's (request credentials) or one of the configured, by weight."""
        if target.api_key:
            return target.api_key
        if len(self._keys) > 1:
            return random.choices(self._keys, self._weights)[0]
        return self._keys[0] if self._keys else None

    def key_for(self, target: Target) -> str | None:
        """:meth:`api_key`, refused with a clear 401 when this provider needs one and has none."""
        key = self.api_key(target)
        if not key and self.requires_key:
            raise UpstreamError(
                f"provider `{self.id}` has no API key: set `api_key` in [providers.{self.id}] (or its ${{ENV}} "
                "variable), or send credentials with the request",
                status=401, provider=self.id, type="invalid_request_error", code="missing_provider_key",
            )
        return key

    def timeout_for_call(self, call: Call) -> Timeout:
        """The request's ``timeout`` param bounds every read (first byte and gaps between chunks)."""
        if call.params.timeout is None:
            return self.timeout
        return Timeout(
            connect=min(self.timeout.connect or call.params.timeout, call.params.timeout),
            read=call.params.timeout,
            write=self.timeout.write,
            pool=self.timeout.pool,
        )

    def request_headers(self, call: Call, own: dict[str, str]) -> dict[str, str]:
        """JSON content type, this provider's configured headers, the client's ``extra_headers``, the
        stages' ``call.upstream_headers`` (both less the context's ``forbidden_headers``), then ``own``:
        what the adapter sets itself, credentials and API version (e.g. ``{"authorization": "Bearer ..."}``)."""
        headers = {"content-type": "application/json", **self.settings.headers}
        forbidden = self.context.forbidden_headers
        if call.params.extra_headers:
            headers.update({k: v for k, v in call.params.extra_headers.items() if k.lower() not in forbidden})
        if call.upstream_headers:
            headers.update({k: v for k, v in call.upstream_headers.items() if k.lower() not in forbidden})
        headers.update(own)
        return headers

    async def send(
        self, call: Call, target: Target, url: str, body: bytes, headers: dict[str, str], *, stream: bool | None = None
    ) -> UpstreamResponse:
        """POST ``body`` to the provider with the call's timeouts and return the response: the one way
        an adapter sends (through the shared :class:`~respan_gateway.upstream.UpstreamClient`).

        Transport failures raise 502/504, an error status raises :meth:`error_from_response`'s error
        (the response closed), and a streaming request answered with anything but an event stream is
        a 502 (:attr:`stream_content_type`). ``stream`` defaults to the call's; a streamed response must be
        closed by the caller, a response that is not streamed has its body read (``read_body``).
        """
        stream = call.stream if stream is None else stream
        try:
            response = await self.http.send("POST", url, headers, body, self.timeout_for_call(call), stream=stream)
        except TransportError as exc:
            raise self.transport_error(exc, target) from None
        if response.status_code >= 400:
            try:
                raise await self.error_from_response(response, target)
            finally:
                await response.aclose()
        if stream and self.stream_content_type not in response.headers.get("content-type", ""):
            await response.aclose()
            raise UpstreamError(f"provider `{self.id}` did not answer the streaming request with an event stream", status=502, provider=self.id)
        return response

    async def read_body(self, response: UpstreamResponse, target: Target) -> bytes:
        """The whole body of a (non-streamed) answer, at most ``[upstream] max_body_bytes`` (larger is a
        502 ``upstream_response_too_large``); a transport failure while reading raises 502/504."""
        try:
            return await self._read_limited(response)
        except TransportError as exc:
            raise self.transport_error(exc, target) from None
        finally:
            await response.aclose()

    async def _read_limited(self, response: UpstreamResponse) -> bytes:
        limit = self.context.upstream.max_body_bytes
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise self._too_large(limit)
        pieces, size = [], 0
        async for piece in response.aiter_bytes():
            size += len(piece)
            if size > limit:
                raise self._too_large(limit)
            pieces.append(piece)
        return b"".join(pieces)  # no copy for a body read whole (one piece)

    def _too_large(self, limit: int) -> UpstreamTooLarge:
        return UpstreamTooLarge(
            f"provider `{self.id}` answered with a body larger than {limit} bytes ([upstream] max_body_bytes)", provider=self.id
        )

    async def read_json(self, response: UpstreamResponse, target: Target) -> dict[str, Any]:
        """The answer decoded; anything but a JSON object is a 502."""
        return self.parse_json(await self.read_body(response, target), response.status_code)

    def parse_json(self, content: bytes, status: int) -> dict[str, Any]:
        """An answer body (from :meth:`read_body`) decoded; anything but a JSON object is a 502."""
        try:
            answer = _decode(content)
        except msgspec.DecodeError:
            answer = None
        if not isinstance(answer, dict):
            raise UpstreamError(f"provider `{self.id}` answered {status} with something that is not a JSON object", status=502, provider=self.id)
        return answer

    def configured_secrets(self) -> tuple[str, ...]:
        """Every secret of this provider's config (keys, header values): redacted from every error
        message, log record and process-log line. A subclass with secrets of its own adds them."""
        return self._secrets

    def secrets(self, target: Target) -> tuple[str, ...]:
        """The secrets an error of this attempt may carry: the target's key and :meth:`configured_secrets`."""
        return (target.api_key or "", *self.configured_secrets())

    def transport_error(self, exc: TransportError, target: Target) -> UpstreamError:
        # No redaction here: every error out of an adapter is redacted in one place (Gateway.dispatch).
        return transport_error(exc, self.id)

    async def error_from_response(self, response: UpstreamResponse, target: Target) -> UpstreamError:
        """The provider's error answer as an :class:`UpstreamError` keeping its status and message."""
        fields = self.error_fields(await self._read_limited(response))
        status = response.status_code
        code = fields.code
        # One code for "the prompt is too long", whatever the provider's words (reliability falls back on it).
        if is_context_length_exceeded(status, fields.message, code):
            code = CONTEXT_LENGTH_EXCEEDED
        return UpstreamError(
            fields.message or f"provider `{self.id}` answered {status}",
            status=status,
            provider=self.id,
            retry_after=parse_retry_after(response.headers),
            type=fields.type or "upstream_error",
            param=fields.param,
            code=code,
        )

    def error_fields(self, content: bytes) -> ErrorFields:
        """What this provider's error body says. Adapters parse their own shape and fall back on this
        generic reading: ``{"error": {...}}``, ``{"error": "..."}``, a bare object, or the text."""
        return generic_error_fields(content)

    # -- streams ----------------------------------------------------------------------------------
    async def events(self, response: UpstreamResponse, target: Target, *,
                     mark: Callable[[Chunk], StreamMark | None] | None = None,
                     error: Callable[[Chunk], GatewayError | None] | None = None,
                     seen: Callable[[Chunk], None] | None = None) -> AsyncIterator[Chunk]:
        """The events of a streamed answer, as :class:`Chunk`: the one upstream SSE loop.

        Each event goes through :meth:`stream_error` (an error event raises) and :meth:`stream_mark`
        (the provider's end marker, or the sign the answer is complete), or through ``error`` and
        ``mark`` when given: for a second wire format of the same provider (OpenAI's Responses API). A broken connection raises
        :class:`StreamInterrupted`, and so does a body that ends with neither an end marker nor a
        complete answer (a truncated answer never looks complete). The response is always closed.
        ``seen`` is called with each event passed on, before it is: what an adapter reads of its stream
        (its usage) without a loop of its own around this one (a generator layer costs per chunk).
        """
        complete = False
        mark_of, error_of = mark or self.stream_mark, error or self.stream_error
        try:
            # One event larger than [upstream] max_event_bytes raises 502 upstream_response_too_large.
            async for chunk in read_events(response.aiter_bytes(), self.context.upstream.max_event_bytes, self.id):
                failure = error_of(chunk)
                if failure is not None:
                    raise failure
                meaning = mark_of(chunk)
                if meaning == "end":
                    return
                if seen is not None:
                    seen(chunk)
                yield chunk
                if meaning == "last":
                    return
                complete = complete or meaning == "complete"
        except TransportError as exc:
            err = self.transport_error(exc, target)
            raise StreamInterrupted(f"the stream from provider `{self.id}` broke off: {err.message}", provider=self.id) from None
        finally:
            await response.aclose()
        if not complete:
            raise StreamInterrupted(f"provider `{self.id}` ended the stream before the answer was complete", provider=self.id)

    def stream_mark(self, chunk: Chunk) -> StreamMark | None:
        """What ``chunk`` means for the end of the stream (see :data:`StreamMark`); None: an ordinary event."""
        return None

    def stream_error(self, chunk: Chunk) -> GatewayError | None:
        """The error ``chunk`` reports, when it is the provider's error event (raised by :meth:`events`)."""
        return None


def generic_error_fields(content: bytes) -> ErrorFields:
    """message, type, param, code from an error body of a common shape, or its text."""
    try:
        body = _decode(content)
    except msgspec.DecodeError:
        return ErrorFields(message=content.decode("utf-8", "replace").strip()[:2000])
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            code = err.get("code")
            return ErrorFields(
                message=str(err.get("message") or err.get("detail") or ""),
                type=err.get("type") if isinstance(err.get("type"), str) else None,
                param=err.get("param") if isinstance(err.get("param"), str) else None,
                code=str(code) if code is not None else None,
            )
        if isinstance(err, str):
            return ErrorFields(message=err)
    return ErrorFields(message=content.decode("utf-8", "replace")[:2000])


class Catalog:
    """Resolves model slugs to targets: catalog entries first, then ``<provider id>/<model>`` slugs."""

    def __init__(self, models: dict[str, ModelEntry], providers: dict[str, ProviderAdapter]) -> None:
        self.models = models
        self.providers = providers
        self._providers_lower = {p.lower(): p for p in providers}

    def check(self, source: str) -> None:
        for slug, entry in self.models.items():
            if entry.provider not in self.providers:
                raise ConfigError(f"{source}: `models.{slug}.provider`: no provider `{entry.provider}` is configured")

    def entry(self, slug: str) -> ModelEntry | None:
        entry = self.models.get(slug)
        if entry is None:
            prefix, _, rest = slug.partition("/")
            if rest and prefix in self.providers:
                entry = self.models.get(rest)
        return entry

    def resolve(self, slug: str, provider: str | None = None) -> Target:
        """The target for ``slug``; ``provider`` pins the provider (``X-Respan-Route-Provider``).

        A pinned request uses the pinned provider's own entry for the slug when the catalog has one
        (``<provider id>/<slug>`` or ``<adapter type>/<slug>``, e.g. ``vertex_ai/claude-sonnet-4-5-20250929``):
        its upstream model name (Vertex spells it ``claude-sonnet-4-5@20250929``) and its prices, and
        that entry's slug is the attempt's model."""
        pinned = None
        if provider:
            pinned = self._providers_lower.get(provider.strip().lower())
            if pinned is None:
                raise BadRequest(
                    f"unknown provider `{provider}` in X-Respan-Route-Provider / route_provider_override",
                    param="route_provider_override",
                )
            adapter = self.providers[pinned]
            for key in dict.fromkeys((f"{pinned}/{slug}", f"{adapter.settings.type or pinned}/{slug}")):
                own = self.models.get(key)
                if own is not None:
                    return Target(provider=pinned, model=key, upstream_model=own.upstream_model or slug)
        entry = self.models.get(slug)
        if entry is not None:
            return Target(provider=pinned or entry.provider, model=slug, upstream_model=entry.upstream_model or slug)
        prefix, _, rest = slug.partition("/")
        if rest and prefix in self.providers:
            entry = self.models.get(rest)
            upstream = entry.upstream_model if entry and entry.upstream_model else rest
            return Target(provider=pinned or prefix, model=slug, upstream_model=upstream)
        if pinned is not None:
            return Target(provider=pinned, model=slug, upstream_model=slug)
        raise ModelNotFound(f"Requested model `{slug}` is not available in the model list", param="model")

    def capabilities(self, target: Target) -> frozenset[str]:
        """What the model of ``target`` can do: its catalog entry's ``capabilities`` and its adapter's."""
        entry = self.entry(target.model)
        adapter = self.providers.get(target.provider)
        own = adapter.capabilities if adapter is not None else frozenset()
        return own | frozenset(entry.capabilities) if entry is not None else own

    def listing(self) -> list[dict[str, Any]]:
        return [
            {"id": slug, "object": "model", "created": 0, "owned_by": entry.provider}
            for slug, entry in self.models.items()
        ]
