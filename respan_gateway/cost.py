"""Token usage and cost: the one cost function of the gateway.

Logs, request_breakdown, budgets and caches all price a request here, so that they agree to the cent.

Each provider adapter reports the :class:`Usage` of its answers in ``call.outcome.usage``, read from
its own wire format (the Anthropic and Gemini shapes live in their plugins). The core speaks OpenAI
chat, so the reader of that shape is here: :func:`chat_usage` decodes only the ``usage`` field of an
answer or stream chunk, with a typed decoder (:func:`chat_usage_of`: of a chunk already decoded).

:func:`usage_from` (kept for the logging plugin, which still reads usage from the answers it
accumulates; it goes when logging reads ``call.outcome.usage``) reads the usage object of any answer or stream chunk the gateway relays, in each
provider's shape, into one :class:`Usage` where ``prompt_tokens`` counts *every* input token (cache
reads and writes included) and the cache counts say how many of them were priced as such:

================================  ===============================================================
shape                             fields read
================================  ===============================================================
OpenAI chat (and translations)    ``prompt_tokens`` (cache included), ``completion_tokens``,
                                  ``prompt_tokens_details.cached_tokens`` / ``cache_write_tokens``,
                                  ``completion_tokens_details.reasoning_tokens``; top-level
                                  ``cache_read_input_tokens`` / ``cache_creation_input_tokens``
                                  (LiteLLM-style translations of Anthropic) are read too
OpenAI Responses                  ``input_tokens`` (cache included), ``output_tokens``,
                                  ``input_tokens_details.cached_tokens`` / ``cache_write_tokens``
Anthropic Messages                ``input_tokens`` (cache *excluded*), ``output_tokens``,
                                  ``cache_read_input_tokens``, ``cache_creation_input_tokens``
Gemini ``usageMetadata``          ``promptTokenCount`` (cache included), ``candidatesTokenCount``
                                  + ``thoughtsTokenCount``, ``cachedContentTokenCount``
================================  ===============================================================

:func:`cost` prices a :class:`Usage` with a catalog entry's prices (USD per 1M tokens): uncached
input at ``input_cost``, cache reads at ``cache_read_cost`` and cache writes at ``cache_write_cost``
(each falling back to the input price when the catalog has none), output at ``output_cost``. The
request params ``prompt_unit_price`` / ``completion_unit_price`` (USD per 1M) replace the input and
output prices.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .config import ModelEntry

PER_TOKENS = 1_000_000


class Usage(msgspec.Struct, kw_only=True):
    """Tokens of one request. ``prompt_tokens`` includes ``cache_read_tokens`` and ``cache_write_tokens``."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    # True when the provider reported no usage and the gateway counted the tokens itself.
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def token_count(value: Any) -> int:
    """A token count read from a provider's usage: a positive int, else 0 (null, negative, a bool...)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_from(obj: Any) -> Usage | None:
    """The :class:`Usage` of a usage object in any supported shape (see the module doc); None if it is not one."""
    if not isinstance(obj, dict) or not obj:
        return None
    if "promptTokenCount" in obj or "candidatesTokenCount" in obj:  # Gemini usageMetadata
        return Usage(
            prompt_tokens=token_count(obj.get("promptTokenCount")),
            completion_tokens=token_count(obj.get("candidatesTokenCount")) + token_count(obj.get("thoughtsTokenCount")),
            cache_read_tokens=token_count(obj.get("cachedContentTokenCount")),
            reasoning_tokens=token_count(obj.get("thoughtsTokenCount")),
        )
    if "prompt_tokens" in obj or "completion_tokens" in obj:  # OpenAI chat / embeddings
        details = obj.get("prompt_tokens_details") or {}
        out_details = obj.get("completion_tokens_details") or {}
        read = token_count(details.get("cached_tokens")) or token_count(obj.get("cache_read_input_tokens"))
        write = token_count(details.get("cache_write_tokens")) or token_count(obj.get("cache_creation_input_tokens"))
        return Usage(
            prompt_tokens=token_count(obj.get("prompt_tokens")),
            completion_tokens=token_count(obj.get("completion_tokens")),
            cache_read_tokens=read,
            cache_write_tokens=write,
            reasoning_tokens=token_count(out_details.get("reasoning_tokens")),
        )
    if "input_tokens" in obj or "output_tokens" in obj:
        if "input_tokens_details" in obj or "output_tokens_details" in obj or "total_tokens" in obj:  # Responses
            details = obj.get("input_tokens_details") or {}
            out_details = obj.get("output_tokens_details") or {}
            return Usage(
                prompt_tokens=token_count(obj.get("input_tokens")),
                completion_tokens=token_count(obj.get("output_tokens")),
                cache_read_tokens=token_count(details.get("cached_tokens")),
                cache_write_tokens=token_count(details.get("cache_write_tokens")),
                reasoning_tokens=token_count(out_details.get("reasoning_tokens")),
            )
        read, write = token_count(obj.get("cache_read_input_tokens")), token_count(obj.get("cache_creation_input_tokens"))
        return Usage(  # Anthropic: input_tokens excludes the cache
            prompt_tokens=token_count(obj.get("input_tokens")) + read + write,
            completion_tokens=token_count(obj.get("output_tokens")),
            cache_read_tokens=read,
            cache_write_tokens=write,
        )
    return None


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None


class _CompletionDetails(msgspec.Struct):
    reasoning_tokens: int | None = None


class ChatUsage(msgspec.Struct):
    """OpenAI's ``usage`` object (chat and embeddings). ``cache_read_input_tokens`` /
    ``cache_creation_input_tokens``: LiteLLM-style translations of Anthropic put the cache counts there."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_details: _PromptDetails | None = None
    completion_tokens_details: _CompletionDetails | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None

    def normalised(self) -> Usage:
        details = self.prompt_tokens_details or _PromptDetails()
        out = self.completion_tokens_details or _CompletionDetails()
        return Usage(
            prompt_tokens=token_count(self.prompt_tokens),
            completion_tokens=token_count(self.completion_tokens),
            cache_read_tokens=token_count(details.cached_tokens) or token_count(self.cache_read_input_tokens),
            cache_write_tokens=token_count(details.cache_write_tokens) or token_count(self.cache_creation_input_tokens),
            reasoning_tokens=token_count(out.reasoning_tokens),
        )


class _WithUsage(msgspec.Struct):
    usage: ChatUsage | None = None


_decode_usage = msgspec.json.Decoder(_WithUsage).decode


def chat_usage(content: bytes) -> Usage | None:
    """The usage of an OpenAI chat or embeddings answer, or of a stream chunk (None when it has none or
    is unreadable). Only the ``usage`` field is decoded; the rest of the body is skipped."""
    try:
        usage = _decode_usage(content).usage
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return usage.normalised() if usage is not None else None


def chat_usage_of(usage: dict[str, Any]) -> Usage | None:
    """:func:`chat_usage` of a ``usage`` object already decoded (a stream chunk's, read once by the
    OpenAI adapter): the same :class:`Usage`, None when a field has the wrong type."""
    try:
        return msgspec.convert(usage, ChatUsage).normalised()
    except msgspec.ValidationError:
        return None


def cost(
    entry: ModelEntry | None,
    usage: Usage,
    *,
    prompt_unit_price: float | None = None,
    completion_unit_price: float | None = None,
) -> float:
    """USD for ``usage`` at ``entry``'s prices (USD per 1M tokens); request overrides win. 0 when unpriced."""
    input_price = prompt_unit_price if prompt_unit_price is not None else (entry.input_cost if entry else 0.0)
    output_price = completion_unit_price if completion_unit_price is not None else (entry.output_cost if entry else 0.0)
    read_price = entry.cache_read_cost if entry is not None and entry.cache_read_cost is not None else input_price
    write_price = entry.cache_write_cost if entry is not None and entry.cache_write_cost is not None else input_price
    read = min(usage.cache_read_tokens, usage.prompt_tokens)
    write = min(usage.cache_write_tokens, usage.prompt_tokens - read)
    uncached = usage.prompt_tokens - read - write
    total = uncached * input_price + read * read_price + write * write_price + usage.completion_tokens * output_price
    return total / PER_TOKENS


__all__ = ["ChatUsage", "Usage", "chat_usage", "chat_usage_of", "cost", "token_count", "usage_from"]
