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
from typing import TYPE_CHECKING, Any, ClassVar

import httpx2
import msgspec

from .call import Call, Result, Target
from .config import ConfigError, ModelEntry, ProviderSettings
from .errors import BadRequest, ModelNotFound, UpstreamError
from .upstream import parse_retry_after, redact, timeout_for, transport_error

if TYPE_CHECKING:
    from .gateway import Gateway


class ProviderAdapter:
    """Base class of provider adapters. Subclasses implement the endpoint kinds they serve.

    Class attributes:
      ``Settings``: the struct of this adapter's ``[providers.<id>]`` table (a ``ProviderSettings`` subclass).
      ``default_base_url``: used when the table has no ``base_url``.
    """

    Settings: ClassVar[type[ProviderSettings]] = ProviderSettings
    default_base_url: ClassVar[str] = ""

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

    def secrets(self, target: Target) -> tuple[str, ...]:
        return (target.api_key or "", *self._keys)

    def transport_error(self, exc: httpx2.TransportError, target: Target) -> UpstreamError:
        return transport_error(exc, self.id, self.secrets(target))

    async def error_from_response(self, response: httpx2.Response, target: Target) -> UpstreamError:
        """The provider's error answer as an :class:`UpstreamError` keeping its status and message."""
        await response.aread()
        message, type_, param, code = _error_fields(response.content)
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
            code = err.get("code")
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
