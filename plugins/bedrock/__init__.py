"""Provider ``bedrock``: AWS Bedrock's Converse and ConverseStream APIs (every model Converse serves).

OpenAI chat requests are translated to ``POST /model/{modelId}/converse`` (streams:
``/converse-stream``) and the answers back (:mod:`.converse`). Requests are signed with AWS
Signature V4 by botocore's signer (``botocore.auth.SigV4Auth`` over an ``AWSRequest``), with the
credentials of the request, of the config, or of botocore's default chain (environment, shared
files, SSO, container and instance roles); a Bedrock API key is sent as a Bearer token instead.

A ConverseStream answer is AWS's binary event stream (``application/vnd.amazon.eventstream``), not
SSE: botocore's ``EventStreamBuffer`` unframes it as the bytes arrive (checksums checked) and each
event is translated and relayed at once. Exception events end the client's stream with an error
event; HTTP errors keep their status, except that a credential AWS refuses (``UnrecognizedClient``,
``InvalidSignature``, ``ExpiredToken``...) is a 401 naming the provider, and throttling is a 429
(with the provider's ``Retry-After`` when it sent one) that the reliability stage retries and falls
back on.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import msgspec

from respan_gateway import (
    BadRequest, Call, Chunk, ConfigError, ErrorFields, JSONResult, ProviderAdapter, ProviderSettings, Result,
    StreamInterrupted, StreamResult, Target, UpstreamError, UpstreamTooLarge, hookimpl,
)
from respan_gateway.hookspecs import RegisterProvider
from respan_gateway.openai_chat import include_usage
from respan_gateway.providers import AdapterContext, generic_error_fields
from respan_gateway.upstream import TransportError, UpstreamResponse, parse_retry_after

from .converse import StreamTranslator, converse_to_openai, normalised_usage, request_to_converse, stream_exception

if TYPE_CHECKING:
    from botocore.credentials import Credentials, ReadOnlyCredentials

# botocore (~1 s of imports) is imported where it is first used, by a gateway with a bedrock
# provider: every other gateway (and CLI command) starts without it.

_decode = msgspec.json.decode
_encode = msgspec.json.Encoder().encode

#: AWS's answers to a credential it does not accept (403 over HTTP): a 401 for the client.
CREDENTIAL_ERRORS = frozenset({
    "UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException", "IncompleteSignatureException",
    "MissingAuthenticationTokenException", "InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken",
})
# A foundation model id without an inference profile: `<vendor>.<model>` (not an ARN, not `us.<vendor>...`).
_FOUNDATION_MODEL = re.compile(r"^(anthropic|amazon|meta|mistral|cohere|deepseek|ai21|writer|qwen|openai|twelvelabs)\.")
#: Per-request credential fields (``customer_credentials`` / ``credential_override``, Respan's names).
REQUEST_REGION_KEYS = ("aws_region_name", "aws_region", "region")


class BedrockSettings(ProviderSettings):
    # The AWS region of this provider entry (bedrock-runtime.<region>.amazonaws.com); empty = the
    # AWS_REGION / AWS_DEFAULT_REGION environment variable.
    region: str = ""
    # Static credentials; empty = botocore's default chain (environment, ~/.aws, SSO, container and
    # instance roles). `api_key` (a Bedrock API key, sent as a Bearer token) is the other choice.
    aws_access_key_id: str = ""
    aws_secret_access_key: str = ""
    aws_session_token: str = ""
    # A named profile of ~/.aws/config for the default chain.
    aws_profile: str = ""
    # A cross-region inference profile ("us", "eu", "apac", "global"...) put before every foundation
    # model id that has none (`anthropic.claude-...` is sent as `us.anthropic.claude-...`): newer models
    # are served only through one. Empty: model ids are sent as they are.
    inference_profile: str = ""


class _ErrorBody(msgspec.Struct):
    message: str | None = None
    Message: str | None = None
    type_: str | None = msgspec.field(default=None, name="__type")


_decode_error = msgspec.json.Decoder(_ErrorBody).decode


class BedrockAdapter(ProviderAdapter):
    Settings = BedrockSettings
    # No client may set a signature, its date or a session token through extra_headers.
    credential_headers = frozenset({"authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256"})
    stream_content_type = "application/vnd.amazon.eventstream"
    settings: BedrockSettings

    def __init__(self, provider_id: str, settings: ProviderSettings, context: AdapterContext) -> None:
        super().__init__(provider_id, settings, context)
        s = self.settings
        self.region = s.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or ""
        if not self.region:
            raise ConfigError(f"`providers.{provider_id}.region`: a bedrock provider needs a region (or AWS_REGION in the environment)")
        if bool(s.aws_access_key_id) != bool(s.aws_secret_access_key):
            raise ConfigError(f"`providers.{provider_id}`: set both `aws_access_key_id` and `aws_secret_access_key`, or neither")
        from botocore.credentials import Credentials

        self._static = (Credentials(s.aws_access_key_id, s.aws_secret_access_key, s.aws_session_token or None)
                        if s.aws_access_key_id else None)
        self._chain: Credentials | None | bool = None  # botocore's chain, resolved on first use (False: found none)
        self._chain_lock = asyncio.Lock()

    def configured_secrets(self) -> tuple[str, ...]:
        s = self.settings
        return (*super().configured_secrets(), *(v for v in (s.aws_secret_access_key, s.aws_session_token) if v))

    # -- endpoint kinds ---------------------------------------------------------------------------
    async def chat(self, call: Call, target: Target) -> Result:
        body = {k: _decode(v) for k, v in call.body.items()}
        model = self.model_id(target.upstream_model)
        upstream = _encode(request_to_converse(body, model))
        region = self._region(target)
        base = (target.base_url or self.base_url or f"https://bedrock-runtime.{region}.amazonaws.com").rstrip("/")
        url = f"{base}/model/{quote(model, safe='')}/{'converse-stream' if call.stream else 'converse'}"
        headers = await self.signed_headers(call, target, url, upstream, region)
        response = await self.send(call, target, url, upstream, headers)
        if call.stream:
            return StreamResult(self._stream(call, response, target, include_usage(call)))
        answer = await self.read_json(response, target)
        call.outcome.usage = normalised_usage(answer.get("usage") or {})
        return JSONResult(200, data=converse_to_openai(answer, model))

    def model_id(self, model: str) -> str:
        """The model id sent: ``inference_profile`` put before a foundation model id (``vendor.model``) with none."""
        profile = self.settings.inference_profile
        if profile and _FOUNDATION_MODEL.match(model):
            return f"{profile}.{model}"
        return model

    # -- credentials and signing ------------------------------------------------------------------
    def _region(self, target: Target) -> str:
        for key in REQUEST_REGION_KEYS:
            value = target.extra.get(key)
            if value:
                if not isinstance(value, str) or not value.replace("-", "").isalnum():
                    raise BadRequest(f"`{key}` must be an AWS region name such as us-east-1", param="customer_credentials")
                return value
        return self.region

    async def signed_headers(self, call: Call, target: Target, url: str, body: bytes, region: str) -> dict[str, str]:
        """The request's headers, with a Bearer API key or a SigV4 signature of exactly these bytes."""
        headers = self.request_headers(call, {})
        credentials = self._request_credentials(target)
        if credentials is None:
            key = target.api_key or (None if self._static else self.api_key(target))
            if key:
                return {**headers, "authorization": f"Bearer {key}"}
            credentials = self._static or await self._chain_credentials()
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(method="POST", url=url, data=body, headers=headers)
        SigV4Auth(credentials, "bedrock", region).add_auth(request)
        return dict(request.headers.items())

    def _request_credentials(self, target: Target) -> Credentials | None:
        extra = target.extra
        key_id, secret, token = extra.get("aws_access_key_id"), extra.get("aws_secret_access_key"), extra.get("aws_session_token")
        if not key_id and not secret:
            return None
        if not (isinstance(key_id, str) and key_id and isinstance(secret, str) and secret):
            raise BadRequest("AWS credentials need both `aws_access_key_id` and `aws_secret_access_key` (strings)",
                             param="customer_credentials")
        if token is not None and not isinstance(token, str):
            raise BadRequest("`aws_session_token` must be a string", param="customer_credentials")
        from botocore.credentials import Credentials

        return Credentials(key_id, secret, token or None)

    async def _chain_credentials(self) -> Credentials | ReadOnlyCredentials:
        if self._chain is None:
            async with self._chain_lock:
                if self._chain is None:
                    # The chain may read files or ask the instance metadata service: off the event loop.
                    import botocore.session

                    session = botocore.session.Session(profile=self.settings.aws_profile or None)
                    self._chain = await asyncio.to_thread(session.get_credentials) or False
        chain = self._chain
        if not chain:
            raise UpstreamError(
                f"provider `{self.id}` has no AWS credentials: set `aws_access_key_id` and `aws_secret_access_key` (or "
                f"`api_key`) in [providers.{self.id}], provide them in the environment, or send credentials with the request",
                status=401, provider=self.id, type="invalid_request_error", code="missing_provider_key",
            )
        from botocore.credentials import RefreshableCredentials

        if isinstance(chain, RefreshableCredentials) and chain.refresh_needed():
            return await asyncio.to_thread(chain.get_frozen_credentials)  # a refresh may block: in a thread
        return chain.get_frozen_credentials()

    # -- errors -----------------------------------------------------------------------------------
    def error_fields(self, content: bytes) -> ErrorFields:
        """AWS's JSON error ``{"message": ...}`` (or ``Message``, with ``__type``); other shapes the generic way."""
        try:
            err = _decode_error(content)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return generic_error_fields(content)
        message = err.message or err.Message
        if not message:
            return generic_error_fields(content)
        kind = err.type_.rsplit("#", 1)[-1] if err.type_ else None
        return ErrorFields(message=message, code=kind)

    async def error_from_response(self, response: UpstreamResponse, target: Target) -> UpstreamError:
        fields = self.error_fields(await self._read_limited(response))
        # x-amzn-ErrorType: "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"
        kind = response.headers.get("x-amzn-errortype", "").split(":", 1)[0] or fields.code or ""
        status = response.status_code
        message = fields.message or f"provider `{self.id}` answered {status}"
        if kind in CREDENTIAL_ERRORS or status == 401:
            return UpstreamError(f"provider `{self.id}` refused the AWS credentials ({kind or status}): {message}",
                                 status=401, provider=self.id, type="authentication_error", code=kind or "invalid_provider_credentials")
        if status == 424:  # ModelErrorException: the model failed, not the request
            status = 502
        return UpstreamError(message, status=status, provider=self.id, retry_after=parse_retry_after(response.headers),
                             type="upstream_error", code=kind or None)

    # -- streams ----------------------------------------------------------------------------------
    async def _stream(self, call: Call, response: UpstreamResponse, target: Target, usage: bool) -> AsyncIterator[Chunk]:
        translator = StreamTranslator(self.id, target.upstream_model, usage)
        async for kind, event in self.frames(response, target):
            for chunk in translator.feed(kind, event):
                yield chunk
            if kind == "metadata" and translator.usage is not None:
                call.outcome.usage = normalised_usage(translator.usage)
        for chunk in translator.close():
            yield chunk

    async def frames(self, response: UpstreamResponse, target: Target) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """The events of a ConverseStream answer as ``(event type, payload)``, unframed by botocore as the
        bytes arrive. An exception event raises; so do a broken connection, a frame that fails its
        checksum and one larger than ``[upstream] max_event_bytes``. The response is always closed."""
        from botocore.eventstream import EventStreamBuffer, ParserError

        buffer = EventStreamBuffer()
        limit = self.context.upstream.max_event_bytes
        pending = 0  # bytes added but not yet taken out as a whole message
        try:
            async for piece in response.aiter_bytes():
                buffer.add_data(piece)
                pending += len(piece)
                for message in buffer:
                    pending -= message.prelude.total_length
                    yield self._event(message.headers, message.payload)
                if pending > limit:
                    raise UpstreamTooLarge(f"provider `{self.id}` sent a stream event larger than {limit} bytes "
                                           "([upstream] max_event_bytes)", provider=self.id)
        except TransportError as exc:
            err = self.transport_error(exc, target)
            raise StreamInterrupted(f"the stream from provider `{self.id}` broke off: {err.message}", provider=self.id) from None
        except ParserError as exc:
            raise StreamInterrupted(f"provider `{self.id}` sent a malformed event-stream frame ({type(exc).__name__})",
                                    provider=self.id) from None
        finally:
            await response.aclose()
        if pending:
            raise StreamInterrupted(f"provider `{self.id}` ended the stream in the middle of an event", provider=self.id)

    def _event(self, headers: dict[str, Any], payload: bytes) -> tuple[str, dict[str, Any]]:
        try:
            event = _decode(payload) if payload else {}
        except msgspec.DecodeError:
            raise StreamInterrupted(f"provider `{self.id}` sent a stream event that is not JSON", provider=self.id) from None
        event = event if isinstance(event, dict) else {}
        if headers.get(":message-type") in ("exception", "error"):
            kind = str(headers.get(":exception-type") or headers.get(":error-code") or "unknownException")
            raise stream_exception(kind, str(event.get("message") or event.get("Message") or headers.get(":error-message") or ""), self.id)
        return str(headers.get(":event-type") or ""), event


@hookimpl
def register_providers(register: RegisterProvider) -> None:
    register("bedrock", BedrockAdapter)
