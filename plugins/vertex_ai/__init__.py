"""Provider ``vertex_ai``: Gemini and Claude on Google Cloud's Vertex AI.

- Gemini models: ``generateContent`` / ``streamGenerateContent?alt=sse`` on
  ``{location}-aiplatform.googleapis.com/v1/projects/{project}/locations/{location}/publishers/google/models/{model}``,
  translated by the core's Gemini mapping (:mod:`respan_gateway.translate.gemini`).
- Claude models: ``rawPredict`` / ``streamRawPredict`` under ``publishers/anthropic``, the Messages body
  without ``model`` and with ``anthropic_version: "vertex-2023-10-16"``, translated by the core's
  Anthropic mapping (:mod:`respan_gateway.translate.anthropic`).

Which publisher serves a model: ``anthropic/<model>`` or ``google/<model>`` say it; otherwise models
named ``claude-*`` are Anthropic's (``claude-sonnet-4-5-20250929`` becomes Vertex's
``claude-sonnet-4-5@20250929``) and every other model Google's.

Auth, per attempt, the request's credentials first (``customer_credentials`` / ``credential_override``:
``vertex_ai_credentials``, a service-account JSON; ``vertex_ai_access_token``; ``api_key``, an express
mode key), then the config's (``credentials``, ``access_token``, ``api_key``), then the application
default credentials. A service account's JWT is exchanged for an access token by google-auth off the
event loop (:mod:`.auth`), cached until shortly before it expires and refreshed once for every waiting
request. A token Vertex refuses (401) is dropped, so the retry gets a new one; a credential the token
endpoint refuses is a 401 naming the provider. No token or key is ever part of a URL or a message.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import google.auth.exceptions
import msgspec

from respan_gateway.gateway import through_chat
from respan_gateway.translate.messages import MESSAGES_VIA_CHAT
from respan_gateway import (
    BadRequest, Call, Chunk, ConfigError, ErrorFields, GatewayError, JSONResult, ProviderAdapter, ProviderSettings, Result,
    StreamInterrupted, StreamMark, StreamResult, Target, UpstreamError, UpstreamUnreachable, hookimpl,
)
from respan_gateway.hookspecs import RegisterProvider
from respan_gateway.openai_chat import include_usage
from respan_gateway.providers import AdapterContext, generic_error_fields
from respan_gateway.translate import anthropic as claude
from respan_gateway.translate import gemini
from respan_gateway.upstream import UpstreamResponse

from .auth import HttpxRequest, TokenSource, TokenSources, default_credentials, service_account_credentials

_decode = msgspec.json.decode
_encode = msgspec.json.Encoder().encode
_CLAUDE_DATE = re.compile(r"^(claude-.+)-(\d{8})$")
_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9._@-]+$")  # a project, location or model id: nothing that changes the path


class VertexSettings(ProviderSettings):
    # The Google Cloud project and region; `location = "global"` uses aiplatform.googleapis.com. The
    # project defaults to the service account's (or the application default credentials').
    project: str = ""
    location: str = "us-central1"
    # A service-account key: the path of its JSON file, or the JSON itself.
    credentials: str = ""
    # A ready OAuth access token (never refreshed: for short-lived set-ups and tests).
    access_token: str = ""
    # `api_key` (common setting): a Vertex AI express mode key (Gemini models, no project).
    # Sent as `anthropic_version` in Claude requests; `max_tokens` when an OpenAI request names none.
    anthropic_version: str = "vertex-2023-10-16"
    default_max_tokens: int = 4096
    # Seconds before a token's expiry at which it is refreshed.
    token_refresh_margin: float = 300.0


class _Auth(msgspec.Struct, frozen=True):
    """How one attempt authenticates: a Bearer token (from ``source`` when it is refreshable) or an express key."""

    header: dict[str, str]
    token: str | None = None
    source: TokenSource | None = None
    express: bool = False
    # The project of the credentials (a service account's `project_id`), and whether they came with the
    # request (then it comes before the config's `project`).
    project: str | None = None
    from_request: bool = False


class VertexAdapter(ProviderAdapter):
    Settings = VertexSettings
    credential_headers = frozenset({"authorization", "x-goog-api-key"})
    settings: VertexSettings

    def __init__(self, provider_id: str, settings: ProviderSettings, context: AdapterContext) -> None:
        super().__init__(provider_id, settings, context)
        s = self.settings
        if not _PATH_SEGMENT.match(s.location):
            raise ConfigError(f"`providers.{provider_id}.location`: {s.location!r} is not a Vertex AI location")
        #: Seconds since the epoch; replaceable, so that a test can move time past a token's expiry.
        self.clock = time.time
        self._transport = HttpxRequest(timeout=context.upstream.connect_timeout + 30)
        self._sources = TokenSources(self._transport, margin=s.token_refresh_margin, clock=lambda: self.clock())
        self._info: dict[str, Any] | None = None
        self._source: TokenSource | None = None
        if s.credentials:
            self._info = _service_account_info(s.credentials, f"`providers.{provider_id}.credentials`")
            try:
                credentials = service_account_credentials(self._info)
            except ValueError as exc:
                raise ConfigError(f"`providers.{provider_id}.credentials`: not a usable service-account key ({exc})") from None
            self._source = TokenSource(credentials, self._transport, margin=s.token_refresh_margin, clock=lambda: self.clock())
        self._default: tuple[TokenSource, str | None] | None | bool = None  # application default credentials, on first use
        self._default_lock = asyncio.Lock()

    async def shutdown(self) -> None:
        self._transport.close()

    def configured_secrets(self) -> tuple[str, ...]:
        private_key = (self._info or {}).get("private_key")
        return (*super().configured_secrets(), *(v for v in (self.settings.access_token, private_key) if v))

    def secrets(self, target: Target) -> tuple[str, ...]:
        tokens = [s.token for s in (self._source,) if s is not None and s.token]
        if isinstance(self._default, tuple) and self._default[0].token:
            tokens.append(self._default[0].token)
        return (*super().secrets(target), *tokens, *self._sources.tokens())

    # -- endpoint kinds ---------------------------------------------------------------------------
    async def chat(self, call: Call, target: Target) -> Result:
        body = {k: _decode(v) for k, v in call.body.items()}
        publisher, model = publisher_model(target.upstream_model)
        auth = await self._auth(target)
        if publisher == "anthropic":
            if auth.express:
                raise BadRequest(f"provider `{self.id}`: Claude models on Vertex AI need OAuth credentials (a service "
                                 "account or an access token), not an express mode API key", param="model")
            upstream = claude.request_to_anthropic(body, model, self.settings.default_max_tokens)
            upstream.pop("model", None)
            upstream["anthropic_version"] = self.settings.anthropic_version
            method = "streamRawPredict" if call.stream else "rawPredict"
        else:
            upstream = gemini.request_to_gemini(body)
            method = "streamGenerateContent?alt=sse" if call.stream else "generateContent"
        url = self.url(target, auth, publisher, model, method)
        response = await self._send(call, target, url, _encode(upstream), auth)
        if publisher == "anthropic":
            if call.stream:
                return StreamResult(self._claude_stream(call, response, target, include_usage(call)))
            message = await self.read_json(response, target)
            if message.get("type") != "message":
                raise UpstreamError(f"provider `{self.id}` answered 200 with something that is not a Message", status=502, provider=self.id)
            call.outcome.usage = claude.normalised_usage(message.get("usage") or {})
            return JSONResult(200, data=claude.message_to_openai(message))
        if call.stream:
            return StreamResult(self._gemini_stream(call, response, target, include_usage(call)))
        answer = await self.read_json(response, target)
        call.outcome.usage = gemini.normalised_usage(answer.get("usageMetadata") or {})
        return JSONResult(200, data=gemini.response_to_openai(answer, model))

    async def anthropic_messages(self, call: Call, target: Target) -> Result:
        """The native Anthropic endpoint over Claude on Vertex: the Messages body as the client sent it (less
        ``model``, with Vertex's ``anthropic_version``), the answer and its stream unchanged."""
        publisher, model = publisher_model(target.upstream_model)
        if publisher != "anthropic":  # Gemini on Vertex: through the one translation, as any chat-only adapter
            return await through_chat(self.chat, MESSAGES_VIA_CHAT)(call, target)
        auth = await self._auth(target)
        if auth.express:
            raise BadRequest(f"provider `{self.id}`: Claude models on Vertex AI need OAuth credentials, not an express mode API key", param="model")
        body = {k: v for k, v in call.body.items() if k != "model"}
        body["anthropic_version"] = msgspec.Raw(_encode(self.settings.anthropic_version))
        url = self.url(target, auth, publisher, model, "streamRawPredict" if call.stream else "rawPredict")
        response = await self._send(call, target, url, _encode(body), auth)
        if call.stream:
            return StreamResult(self._claude_relay(call, response, target))
        content = await self.read_body(response, target)
        message = self.parse_json(content, response.status_code)
        if message.get("type") != "message":
            raise UpstreamError(f"provider `{self.id}` answered 200 with something that is not a Message", status=502, provider=self.id)
        call.outcome.usage = claude.normalised_usage(message.get("usage") or {})
        return JSONResult(200, content)

    # -- the exchange -----------------------------------------------------------------------------
    def url(self, target: Target, auth: _Auth, publisher: str, model: str, method: str) -> str:
        location = _segment(target.extra.get("vertex_ai_location") or self.settings.location, "vertex_ai_location")
        host = "aiplatform.googleapis.com" if auth.express or location == "global" else f"{location}-aiplatform.googleapis.com"
        base = (target.base_url or self.base_url or f"https://{host}/v1").rstrip("/")
        tail = f"publishers/{publisher}/models/{quote(model, safe='@')}:{method}"
        if auth.express:
            return f"{base}/{tail}"
        project = (target.extra.get("vertex_ai_project") or (auth.project if auth.from_request else None)
                   or self.settings.project or auth.project)
        if not project:
            raise BadRequest(f"provider `{self.id}` has no Google Cloud project: set `project` in [providers.{self.id}] "
                             "or send `vertex_ai_project` with the credentials", param="model")
        return f"{base}/projects/{_segment(project, 'vertex_ai_project')}/locations/{location}/{tail}"

    async def _send(self, call: Call, target: Target, url: str, body: bytes, auth: _Auth) -> UpstreamResponse:
        try:
            return await self.send(call, target, url, body, self.request_headers(call, auth.header))
        except UpstreamError as exc:
            if exc.status == 401:
                if auth.source is not None and auth.token:
                    auth.source.invalidate(auth.token)  # expired or revoked upstream: the next attempt refreshes
                exc.message = f"provider `{self.id}` refused the credentials: {exc.message}"
                exc.args = (exc.message,)
            raise

    async def _auth(self, target: Target) -> _Auth:
        extra = target.extra
        if extra.get("vertex_ai_credentials"):
            try:
                info = _request_service_account(extra["vertex_ai_credentials"])
                source = self._sources.get(info)
            except ValueError as exc:
                raise BadRequest(f"`vertex_ai_credentials` is not a usable service-account key ({exc})", param="customer_credentials") from None
            return await self._bearer(source, info.get("project_id"), from_request=True)
        token = extra.get("vertex_ai_access_token")
        if token:
            if not isinstance(token, str):
                raise BadRequest("`vertex_ai_access_token` must be a string", param="customer_credentials")
            return _Auth({"authorization": f"Bearer {token}"}, token=token)
        if target.api_key:
            return _Auth({"x-goog-api-key": target.api_key}, express=True)
        if self._source is not None:
            return await self._bearer(self._source, (self._info or {}).get("project_id"))
        if self.settings.access_token:
            return _Auth({"authorization": f"Bearer {self.settings.access_token}"}, token=self.settings.access_token)
        key = self.api_key(target)
        if key:
            return _Auth({"x-goog-api-key": key}, express=True)
        source, project = await self._default_source()
        return await self._bearer(source, project)

    async def _bearer(self, source: TokenSource, project: str | None, *, from_request: bool = False) -> _Auth:
        try:
            token = await source.get()
        except google.auth.exceptions.RefreshError as exc:
            raise UpstreamError(
                f"provider `{self.id}` could not get a Google access token: the token endpoint refused the credentials ({_reason(exc)})",
                status=401, provider=self.id, type="authentication_error", code="invalid_provider_credentials",
            ) from None
        except google.auth.exceptions.TransportError as exc:
            raise UpstreamUnreachable(f"provider `{self.id}` could not reach Google's token endpoint ({_reason(exc)})", provider=self.id) from None
        return _Auth({"authorization": f"Bearer {token}"}, token=token, source=source, project=project, from_request=from_request)

    async def _default_source(self) -> tuple[TokenSource, str | None]:
        if self._default is None:
            async with self._default_lock:
                if self._default is None:
                    try:  # may read files or ask the metadata server: off the event loop
                        credentials, project = await asyncio.to_thread(default_credentials)
                    except google.auth.exceptions.DefaultCredentialsError:
                        self._default = False
                    else:
                        source = TokenSource(credentials, self._transport, margin=self.settings.token_refresh_margin, clock=lambda: self.clock())
                        self._default = (source, project)
        if not self._default:
            raise UpstreamError(
                f"provider `{self.id}` has no Google credentials: set `credentials` (a service-account key), `access_token` "
                f"or `api_key` in [providers.{self.id}], provide application default credentials, or send credentials with the request",
                status=401, provider=self.id, type="invalid_request_error", code="missing_provider_key",
            )
        assert isinstance(self._default, tuple)
        return self._default

    def error_fields(self, content: bytes) -> ErrorFields:
        """Google's ``{"error": {code, message, status}}`` (or a list of them, as Vertex streams answer) and
        Anthropic's ``{"type": "error", "error": {type, message}}``; other shapes the generic way."""
        try:
            body = _decode(content)
        except msgspec.DecodeError:
            return generic_error_fields(content)
        if isinstance(body, list) and body:
            body = body[0]
        err = body.get("error") if isinstance(body, dict) else None
        if not isinstance(err, dict) or not err.get("message"):
            return generic_error_fields(content)
        kind = err.get("type") if isinstance(err.get("type"), str) else None
        status = err.get("status") if isinstance(err.get("status"), str) else None
        return ErrorFields(message=str(err["message"]), type=kind, code=status or kind)

    # -- streams ----------------------------------------------------------------------------------
    # One adapter, two stream formats: Claude's events are named (``event: message_start``), Gemini's never.
    def stream_mark(self, chunk: Chunk) -> StreamMark | None:
        if chunk.event is not None:
            return "last" if chunk.event == "message_stop" else "complete" if chunk.event == "message_delta" else None
        return "complete" if b'"finishReason"' in chunk.data or b'"blockReason"' in chunk.data else None

    def stream_error(self, chunk: Chunk) -> GatewayError | None:
        if chunk.event is not None:
            return claude.stream_error(_object(chunk, self.id), self.id) if chunk.event == "error" else None
        if b'"error"' not in chunk.data:
            return None
        data = _object(chunk, self.id)
        return gemini.stream_error(data["error"], self.id) if "error" in data else None

    async def _gemini_stream(self, call: Call, response: UpstreamResponse, target: Target, usage: bool) -> AsyncIterator[Chunk]:
        translator = gemini.StreamTranslator(self.id, target.upstream_model, usage)
        async for event in self.events(response, target):
            for chunk in translator.feed(_object(event, self.id)):
                yield chunk
        if translator.usage:
            call.outcome.usage = gemini.normalised_usage(translator.usage)
        for chunk in translator.close():
            yield chunk

    async def _claude_stream(self, call: Call, response: UpstreamResponse, target: Target, usage: bool) -> AsyncIterator[Chunk]:
        translator = claude.StreamTranslator(self.id, usage)
        async for event in self.events(response, target):
            for chunk in translator.feed(_object(event, self.id)):
                yield chunk
            if translator.finished:
                call.outcome.usage = claude.normalised_usage(translator.usage)
            if translator.done:
                return
        for chunk in translator.close():
            yield chunk


    async def _claude_relay(self, call: Call, response: UpstreamResponse, target: Target) -> AsyncIterator[Chunk]:
        usage: dict[str, Any] = {}
        async for chunk in self.events(response, target):
            if chunk.event in ("message_start", "message_delta"):
                event = _object(chunk, self.id)
                counts = (event.get("message") or {}).get("usage") if chunk.event == "message_start" else event.get("usage")
                usage.update({k: v for k, v in (counts or {}).items() if v is not None})
                if chunk.event == "message_delta":
                    call.outcome.usage = claude.normalised_usage(usage)
            yield chunk


def publisher_model(upstream_model: str) -> tuple[str, str]:
    """(publisher, Vertex model id) of an upstream model name (see the module doc)."""
    name = upstream_model
    if name.startswith("publishers/"):  # publishers/<p>/models/<m>
        parts = name.split("/")
        if len(parts) == 4 and parts[2] == "models":
            return _publisher(parts[1], parts[3])
    publisher, sep, rest = name.partition("/")
    if sep and publisher in ("google", "anthropic"):
        return _publisher(publisher, rest)
    return _publisher("anthropic" if name.startswith("claude") else "google", name)


def _publisher(publisher: str, model: str) -> tuple[str, str]:
    if publisher not in ("google", "anthropic"):
        raise BadRequest(f"Vertex AI publisher `{publisher}` is not supported (google, anthropic)", param="model")
    if publisher == "anthropic" and "@" not in model:
        match = _CLAUDE_DATE.match(model)
        if match:  # Anthropic's dated name as Vertex spells it
            model = f"{match[1]}@{match[2]}"
    return publisher, model


def _segment(value: Any, name: str) -> str:
    if not isinstance(value, str) or not _PATH_SEGMENT.match(value):
        raise BadRequest(f"`{name}` must be a Google Cloud project or location id", param="customer_credentials")
    return value


def _service_account_info(value: str, where: str) -> dict[str, Any]:
    """A service-account JSON from the config: the JSON itself, or the path of its file."""
    text = value.strip()
    if not text.startswith("{"):
        try:
            with open(os.path.expanduser(text), encoding="utf-8") as file:
                text = file.read()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read the service-account file {value!r} ({exc.strerror})") from None
    try:
        info = _decode(text)
    except msgspec.DecodeError:
        raise ConfigError(f"{where}: not a service-account JSON") from None
    if not isinstance(info, dict):
        raise ConfigError(f"{where}: not a service-account JSON")
    return info


def _request_service_account(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = _decode(value)
        except msgspec.DecodeError:
            raise ValueError("not JSON") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _reason(exc: Exception) -> str:
    first = exc.args[0] if exc.args else ""
    return str(first) if first else type(exc).__name__


def _object(chunk: Chunk, provider: str) -> dict[str, Any]:
    try:
        data = _decode(chunk.data)
    except msgspec.DecodeError:
        raise StreamInterrupted(f"provider `{provider}` sent a malformed stream chunk", provider=provider) from None
    return data if isinstance(data, dict) else {}


@hookimpl
def register_providers(register: RegisterProvider) -> None:
    register("vertex_ai", VertexAdapter)
