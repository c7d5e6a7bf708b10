"""What happened to a call: the typed outcome every observer reads.

The core owns :class:`Outcome` (``call.outcome``). Stages fill the slots they decide while the call runs
(an adapter its normalised ``usage``, the cache its :class:`CacheInfo`, prompts the
:class:`PromptRef`, limits their ``limits`` entries); when the answer has been sent, or the stream has
ended (complete, cut, errored or left by the client), the core completes the outcome (status, error,
the assembled answer, usage estimated when the provider reported none, cost at catalog prices) and
calls every observer once with the call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import msgspec

from .cost import Usage

if TYPE_CHECKING:
    from .errors import GatewayError

#: How a streamed answer ended: ``complete`` (the provider finished), ``error`` (an upstream or gateway
#: failure ended it with an error event), ``client_gone`` (the client left first).
StreamEnd = Literal["complete", "error", "client_gone"]


class CacheInfo(msgspec.Struct, kw_only=True):
    """The response cache's decision for this call."""

    key: str | None = None
    hit: bool = False
    # Seconds the stored answer lives; the entry's age on a hit.
    ttl: float | None = None
    age: float | None = None


class PromptRef(msgspec.Struct, kw_only=True):
    """The managed prompt a call was rendered from (set by the ``prompts`` plugin).

    ``version``: the version used (the deployed one, a pinned one or the newest); ``variables``: the
    values it was rendered with (the version's defaults under the request's; a composed prompt's
    value carries its text as ``_rendered_result``); ``template``: the version's messages, unrendered;
    ``rendered``: the rendered messages (what ``echo`` returns)."""

    prompt_id: str
    version: int | None = None
    variables: dict[str, Any] | None = None
    name: str | None = None
    template: list[dict[str, Any]] | None = None
    rendered: list[dict[str, Any]] | None = None


class Customer(msgspec.Struct, kw_only=True, frozen=True):
    """The end customer of a call, normalised once from ``customer_identifier`` / ``customer_params``."""

    identifier: str
    name: str | None = None
    email: str | None = None
    group: str | None = None


class Outcome(msgspec.Struct, kw_only=True):
    """What happened to one call. Slots a stage decides are set by that stage; the rest by the core."""

    # -- set by the core when the call ends -------------------------------------------------------
    status: int = 0
    error: GatewayError | None = None
    # The answer in the endpoint's own (non-stream) shape: the JSON body, or the stream assembled by
    # the endpoint's accumulator. None when nothing was answered.
    answer: Any = None
    # Streams: how it ended, and the number of chunks the client was sent.
    stream_end: StreamEnd | None = None
    chunks: int = 0
    # perf_counter() of the end of the response (the last byte sent).
    ended: float | None = None
    # Durations in seconds, derived once so that logs and metrics agree: first byte in to last byte
    # out; streams: to the first chunk; time in the gateway itself up to the answer (a stream's head,
    # or the error), upstream attempts excluded (retry back-off waits count as gateway time).
    latency: float = 0.0
    time_to_first_token: float | None = None
    overhead: float = 0.0
    # Start of the request to the first upstream attempt (None when none was made).
    routing_time: float | None = None
    # Who answered: the last successful attempt, else the last one tried, else the request's model
    # (``respan/cache`` with no provider for a cache hit).
    model: str | None = None
    provider: str | None = None
    deployment: str | None = None
    # USD at catalog prices (or the request's unit prices); 0 for a cache hit or an unpriced model.
    cost: float = 0.0

    # -- set by stages while the call runs --------------------------------------------------------
    # Normalised token usage, reported by the provider adapter (or a cache hit's stored one); when the
    # call ends without one the core reads the answer's, else estimates it (``usage.estimated``).
    usage: Usage | None = None
    # Normalised once from the typed params (the params plugin, with respan_gateway.params.customer_of).
    customer: Customer | None = None
    cache: CacheInfo | None = None
    prompt: PromptRef | None = None
    # The limits checked (budgets, rate limits), as the log record's ``limit_info``.
    limits: dict[str, Any] | None = None
    load_balance_group_id: str | None = None
    # No log record for this call (a cache hit with ``cache_options.omit_log``).
    omit_log: bool = False
    # The id of the call's log record (the ``x-respan-log-id`` header), set by the logging plugin when
    # it will write one; None when nothing logs the call.
    log_id: str | None = None

    @property
    def cache_hit(self) -> bool:
        return self.cache is not None and self.cache.hit


__all__ = ["CacheInfo", "Customer", "Outcome", "PromptRef", "StreamEnd"]
