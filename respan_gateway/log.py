"""Structured JSON process logs (structlog), with secrets redacted.

Configured once at start-up: a filtering bound logger (levels below the threshold cost one call),
cached on first use, JSON rendered to bytes on stdout. No stdlib logging on the hot path, and never a
line per stream chunk.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from typing import Any

import msgspec
import structlog

from .errors import MIN_SECRET_LENGTH, redact

# Key names whose values are secrets. "token" alone, not token *counts* (prompt_tokens stays readable).
SECRET_KEY_NAMES = _SECRET_KEYS = re.compile(
    r"(api[_-]?key|authorization|secret|password|passwd|credential|private[_-]?key|(^|[_-])token$|"
    r"(access|refresh|auth|session|bearer)[_-]?token|cookie)", re.I)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]{4,}", re.I)
_KEYLIKE = re.compile(r"\b(sk|rk|pk)-[A-Za-z0-9_-]{8,}")
# The gateway's own database keys (the auth plugin's `rsp_<prefix>.<secret>`): the prefix stays readable.
_GATEWAY_KEY = re.compile(r"\b(rsp_[A-Za-z0-9]{8})\.[A-Za-z0-9]{8,}")
# Google API keys, AWS access key ids, and the password of a URL's userinfo (postgresql://u:pw@host).
_GOOGLE_KEY = re.compile(r"\bAIza[0-9A-Za-z_-]{30,}")
_AWS_KEY = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s/]+@")


# The secrets of the config (provider keys, header values), by value: see add_secrets().
_known_secrets: tuple[str, ...] = ()


def add_secrets(secrets: Iterable[str]) -> None:
    """Redact these values from every process-log line from now on (the gateway adds its config's)."""
    global _known_secrets
    _known_secrets = tuple(dict.fromkeys((*_known_secrets, *(s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH))))


def redact_value(value: Any) -> Any:
    if isinstance(value, str):
        if _known_secrets:
            value = redact(value, _known_secrets)
        value = _KEYLIKE.sub(r"\1-[redacted]", _BEARER.sub(r"\1[redacted]", value))
        value = _GATEWAY_KEY.sub(r"\1.[redacted]", value)
        value = _AWS_KEY.sub("[redacted]", _GOOGLE_KEY.sub("[redacted]", value))
        return _URL_PASSWORD.sub(r"\1[redacted]@", value)
    if isinstance(value, dict):
        return {k: "[redacted]" if _SECRET_KEYS.search(str(k)) else redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(v) for v in value]
    return value


def _redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    return {k: "[redacted]" if _SECRET_KEYS.search(k) else redact_value(v) for k, v in event.items()}


_encode = msgspec.json.Encoder(enc_hook=str).encode


def _serialize(event: dict[str, Any], **_: Any) -> bytes:
    # JSONRenderer passes json.dumps-style keywords (default=...); msgspec's encode takes none.
    return _encode(event)


def configure(level: str = "info", stream: Any = None) -> None:
    """Process logs at ``level`` and above, as JSON lines on ``stream`` (a binary file; default stdout:
    the CLI's plugin commands log to stderr, their stdout is for the user)."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact,
            structlog.processors.JSONRenderer(serializer=_serialize),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.BytesLoggerFactory(sys.stdout.buffer if stream is None else stream),
        cache_logger_on_first_use=True,
    )
