"""Provider adapters and the model catalog.

A provider plugin registers adapter classes by type name (``register_providers``). Each
``[providers.<id>]`` table of the config makes one adapter instance of its ``type``. The adapter is the
terminal stage of the pipeline: it receives the :class:`~respan_gateway.call.Call` and the
:class:`~respan_gateway.call.Target` of this attempt, speaks the provider's API with the shared
upstream client, and returns the answer in the shape of the endpoint the client called (OpenAI chat
for ``chat``), as a :class:`JSONResult` or a :class:`StreamResult`. It reports failures by raising
:class:`~respan_gateway.errors.UpstreamError` (with the provider's status) and its subclasses.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar

import httpx2
import msgspec

from .call import Call, Chunk, Result, Target
from .config import ConfigError, ModelEntry, ProviderSettings
from .errors import BadRequest, ModelNotFound, UpstreamError, UpstreamTooLarge
from .sse import read_events
from .upstream import parse_retry_after, parsed_url, redact, timeout_for, transport_error

#: Headers a client may not set upstream through the `extra_headers` param: hop-by-hop ones and every
#: provider's credential header (credentials come from the gateway's credential rules only).
FORBIDDEN_EXTRA_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection",
    "authorization", "api-key", "x-api-key", "x-goog-api-key",
})
_decode = msgspec.json.decode

if TYPE_CHECKING:
    from .gateway import Gateway


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

    def __init__(self, provider_id: str, settings: ProviderSettings, gateway: Gateway) -> None:
        self.id = provider_id
        self.settings = settings
        self.gateway = gateway
        self.base_url = (settings.base_url or self.default_base_url).rstrip("/")
        self._keys = [k.api_key for k in settings.keys] or ([settings.api_key] if settings.api_key else [])
        self._weights = [k.weight for k in settings.keys] or [1.0] * len(self._keys)
        self.timeout = timeout_for(gateway.config.upstream, settings.connect_timeout, settings.read_timeout)

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

    # -- helpers for subclasses -------------------------------------------------------------------
    @property
    def http(self) -> httpx2.AsyncClient:
        return self.gateway.http

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

    def timeout_for_call(self, call: Call) -> httpx2.Timeout:
        """The request's ``timeout`` param bounds every read (first byte and gaps between chunks)."""
        if call.params.timeout is None:
            return self.timeout
        return httpx2.Timeout(
            connect=min(self.timeout.connect or call.params.timeout, call.params.timeout),
            read=call.params.timeout,
            write=self.timeout.write,
            pool=self.timeout.pool,
        )

    def request_headers(self, call: Call, own: dict[str, str]) -> dict[str, str]:
        """JSON content type, this provider's configured headers, the client's ``extra_headers`` (less
        :data:`FORBIDDEN_EXTRA_HEADERS`), then ``own``: what the adapter sets itself, credentials and API
        version (e.g. ``{"authorization": "Bearer ..."}``)."""
        headers = {"content-type": "application/json", **self.settings.headers}
        if call.params.extra_headers:
            headers.update({k: v for k, v in call.params.extra_headers.items() if k.lower() not in FORBIDDEN_EXTRA_HEADERS})
        headers.update(own)
        return headers

    async def send(
        self, call: Call, target: Target, url: str, body: bytes, headers: dict[str, str], *, stream: bool | None = None
    ) -> httpx2.Response:
        """POST ``body`` to the provider with the call's timeouts and return the response.

        Transport failures raise 502/504, an error status raises :meth:`error_from_response`'s error
        (the response closed), and a streaming request answered with anything but an event stream is
        a 502. ``stream`` defaults to the call's; a streamed response must be closed by the caller.
        """
        stream = call.stream if stream is None else stream
        request = self.http.build_request("POST", parsed_url(url), content=body, headers=headers, timeout=self.timeout_for_call(call))
        try:
            response = await self.http.send(request, stream=stream)
        except httpx2.TransportError as exc:
            raise self.transport_error(exc, target) from None
        if response.status_code >= 400:
            try:
                raise await self.error_from_response(response, target)
            finally:
                await response.aclose()
        if stream and "text/event-stream" not in response.headers.get("content-type", ""):
            await response.aclose()
            raise UpstreamError(f"provider `{self.id}` did not answer the streaming request with an event stream", status=502, provider=self.id)
        return response

    def events(self, response: httpx2.Response) -> AsyncIterator[Chunk]:
        """The events of a streamed answer (:func:`~respan_gateway.sse.read_events`); one larger than
        ``[upstream] max_event_bytes`` raises 502 ``upstream_response_too_large``. The caller still
        closes the response (and maps transport errors)."""
        return read_events(response.aiter_bytes(), self.gateway.config.upstream.max_event_bytes, self.id)

    async def read_body(self, response: httpx2.Response, target: Target) -> bytes:
        """The whole body of a (non-streamed) answer, at most ``[upstream] max_body_bytes`` (larger is a
        502 ``upstream_response_too_large``); a transport failure while reading raises 502/504."""
        try:
            return await self._read_limited(response)
        except httpx2.TransportError as exc:
            raise self.transport_error(exc, target) from None
        finally:
            await response.aclose()

    async def _read_limited(self, response: httpx2.Response) -> bytes:
        limit = self.gateway.config.upstream.max_body_bytes
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise self._too_large(limit)
        body = bytearray()
        async for piece in response.aiter_bytes():
            body += piece
            if len(body) > limit:
                raise self._too_large(limit)
        return bytes(body)

    def _too_large(self, limit: int) -> UpstreamTooLarge:
        return UpstreamTooLarge(
            f"provider `{self.id}` answered with a body larger than {limit} bytes ([upstream] max_body_bytes)", provider=self.id
        )

    async def read_json(self, response: httpx2.Response, target: Target) -> dict[str, Any]:
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

    def secrets(self, target: Target) -> tuple[str, ...]:
        return (target.api_key or "", *self._keys)

    def transport_error(self, exc: httpx2.TransportError, target: Target) -> UpstreamError:
        return transport_error(exc, self.id, self.secrets(target))

    async def error_from_response(self, response: httpx2.Response, target: Target) -> UpstreamError:
        """The provider's error answer as an :class:`UpstreamError` keeping its status and message."""
        message, type_, param, code = _error_fields(await self._read_limited(response))
        if not message:
            message = f"provider `{self.id}` answered {response.status_code}"
        return UpstreamError(
            redact(message, self.secrets(target)),
            status=response.status_code,
            provider=self.id,
            retry_after=parse_retry_after(response.headers),
            type=type_ or "upstream_error",
            param=param,
            code=code,
        )


def _error_fields(content: bytes) -> tuple[str, str | None, str | None, str | None]:
    """message, type, param, code from an OpenAI-, Anthropic- or Gemini-shaped error body, or its text."""
    try:
        body = msgspec.json.decode(content)
    except msgspec.DecodeError:
        return content.decode("utf-8", "replace").strip()[:2000], None, None, None
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            # Gemini's `status` ("UNAVAILABLE") names the error better than its numeric `code`.
            code = err.get("status") if isinstance(err.get("status"), str) else err.get("code")
            return (
                str(err.get("message") or err.get("detail") or ""),
                err.get("type") if isinstance(err.get("type"), str) else None,
                err.get("param") if isinstance(err.get("param"), str) else None,
                str(code) if code is not None else None,
            )
        if isinstance(err, str):
            return err, None, None, None
    return content.decode("utf-8", "replace")[:2000], None, None, None


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
        """The target for ``slug``; ``provider`` pins the provider (``X-Respan-Route-Provider``)."""
        pinned = None
        if provider:
            pinned = self._providers_lower.get(provider.strip().lower())
            if pinned is None:
                raise BadRequest(
                    f"unknown provider `{provider}` in X-Respan-Route-Provider / route_provider_override",
                    param="route_provider_override",
                )
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

    def listing(self) -> list[dict[str, Any]]:
        return [
            {"id": slug, "object": "model", "created": 0, "owned_by": entry.provider}
            for slug, entry in self.models.items()
        ]
