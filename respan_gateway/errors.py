"""The one error hierarchy of the gateway.

Every error a client sees is a :class:`GatewayError`. It knows its HTTP status and renders itself in
the envelope of the endpoint the client called: the OpenAI envelope
``{"error": {"message", "type", "param", "code"}}`` everywhere, Anthropic's
``{"type": "error", "error": {"type", "message"}}`` on the native Anthropic endpoint. Messages never
carry secrets: the gateway puts no key into one, and every error that comes out of a provider adapter
(an error answer, a transport failure, an error event in the middle of a stream) has the secrets of
that attempt taken out by :meth:`GatewayError.redact`, in one place (``Gateway.dispatch``), before any
other stage, the client or the log record sees it.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

_encode = msgspec.json.Encoder().encode


class GatewayError(Exception):
    """Base class: an error with an HTTP status, an OpenAI error ``type`` and optional ``param``/``code``."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        self.headers = headers or {}

    def redact(self, secrets: tuple[str, ...]) -> GatewayError:
        """Take every one of ``secrets`` out of the message (in place); returns self."""
        message = redact(self.message, secrets)
        if message != self.message:
            self.message = message
            self.args = (message,)
        return self

    def openai_body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def anthropic_body(self) -> dict[str, Any]:
        return {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(self.status, "api_error"), "message": self.message}}

    def render(self, style: str = "openai") -> bytes:
        """The JSON body of this error in the envelope ``style`` ("openai" or "anthropic")."""
        return _encode(self.anthropic_body() if style == "anthropic" else self.openai_body())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.message!r})"


#: Shorter strings are not taken for secrets: replacing them would garble messages and protect nothing.
MIN_SECRET_LENGTH = 4
REDACTED = "[redacted]"


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with each of ``secrets`` (at least :data:`MIN_SECRET_LENGTH` long) replaced by ``[redacted]``."""
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET_LENGTH and secret in text:
            text = text.replace(secret, REDACTED)
    return text


# Anthropic's error types by status (https://docs.anthropic.com/en/api/errors), used on its native endpoint.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    504: "api_error",
    529: "overloaded_error",
}


class BadRequest(GatewayError):
    """400: the request is malformed (bad JSON, wrong param type, unknown enum value...)."""

    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    """401: missing, unknown or expired gateway API key."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"


class NotFound(GatewayError):
    """404: unknown route, model, prompt or log record."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class Unprocessable(GatewayError):
    status = 422
    type = "invalid_request_error"


class RateLimited(GatewayError):
    """429 made by the gateway (budgets, rate limits); ``retry_after`` seconds when known."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after
        if retry_after is not None:
            self.headers.setdefault("retry-after", str(max(1, round(retry_after))))

    def openai_body(self) -> dict[str, Any]:
        body = super().openai_body()
        if self.retry_after is not None:
            body["error"]["retry_after"] = self.retry_after
        return body


class Overloaded(GatewayError):
    """503 made by the gateway: this worker already answers ``[server] max_in_flight`` requests."""

    status = 503
    type = "server_error"
    code = "gateway_overloaded"

    def __init__(self, message: str, *, retry_after: int = 1, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.headers.setdefault("retry-after", str(retry_after))


class UpstreamError(GatewayError):
    """An error answered by the provider. Keeps the provider's status and message.

    ``retryable`` tells the reliability stage whether resending can help (429, 5xx, 408, 409, 529).
    ``retry_after`` is the provider's ``Retry-After`` in seconds, when it sent one.
    """

    type = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        status: int,
        provider: str | None = None,
        retry_after: float | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(message, status=status, **kw)
        self.provider = provider
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.status in (408, 409, 429) or self.status >= 500


#: The ``code`` of an upstream error that says the prompt does not fit the model's context window,
#: whatever the provider's words (:func:`is_context_length_exceeded`): a reason to try another model,
#: never to resend the same payload to the same one.
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
# What providers say when the prompt is too long: OpenAI (and compatible servers, Azure), Anthropic, Gemini.
_CONTEXT_LENGTH = re.compile(
    r"maximum context length|context_length_exceeded|context window|prompt is too long"
    r"|exceeds the maximum number of tokens",
    re.IGNORECASE,
)


def is_context_length_exceeded(status: int, message: str, code: str | None) -> bool:
    """Whether a provider's error answer (400/413) says the prompt is longer than the model's context."""
    if code == CONTEXT_LENGTH_EXCEEDED:
        return True
    return status in (400, 413) and bool(_CONTEXT_LENGTH.search(message or ""))


class UpstreamUnreachable(UpstreamError):
    """502: the provider could not be reached (connection refused or reset, protocol error)."""

    type = "upstream_connection_error"
    code = "upstream_unreachable"

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, status=502, **kw)


class UpstreamTimeout(UpstreamError):
    """504: the provider did not answer in time (connect, first byte, idle gap or total)."""

    type = "upstream_timeout"
    code = "upstream_timeout"

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, status=504, **kw)


class UpstreamTooLarge(UpstreamError):
    """502: the provider's answer body, or one event of its stream, is larger than the ``[upstream]``
    limit (``max_body_bytes``, ``max_event_bytes``). Not retried: the same request gets the same answer."""

    code = "upstream_response_too_large"
    retryable = False  # type: ignore[assignment]

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, status=502, **kw)


class StreamInterrupted(UpstreamError):
    """The provider's stream failed after the client had received bytes: sent as an error event."""

    type = "server_error"
    code = "stream_interrupted"

    def __init__(self, message: str, **kw: Any) -> None:
        kw.setdefault("status", 502)
        super().__init__(message, **kw)
