"""The log record: one per request, with the fields of SPEC section 8, and how it is built.

Field names follow Respan's log schema (``respan-api-notes.md`` 6.1). Times are epoch seconds in the
record and the store, ISO 8601 in the logs API; durations are seconds; cost is USD.
"""

from __future__ import annotations

import operator
import typing
from typing import Any

import msgspec

from respan_gateway.params import ObservabilityParams

# The column kind of every field: text, int, float, bool, time (epoch seconds) or json.
KINDS: dict[str, str] = {
    # identity and ownership
    "unique_id": "text", "gateway_request_id": "text", "tenant": "text", "key_id": "text",
    "environment": "text", "log_type": "text", "endpoint": "text", "log_method": "text",
    # timing
    "start_time": "time", "timestamp": "time", "latency": "float", "time_to_first_token": "float",
    "routing_time": "float", "gateway_overhead": "float", "tokens_per_second": "float",
    # model and provider
    "model": "text", "requested_model": "text", "provider_id": "text", "deployment_name": "text",
    "load_balance_group_id": "text",
    # status
    "status_code": "int", "status": "text", "error_message": "text", "warnings": "json",
    "upstream_attempts": "int", "stream": "bool",
    # tokens and cost
    "prompt_tokens": "int", "completion_tokens": "int", "total_request_tokens": "int",
    "prompt_cache_hit_tokens": "int", "prompt_cache_creation_tokens": "int", "reasoning_tokens": "int",
    "usage_estimated": "bool", "cost": "float",
    # cache
    "cache_enabled": "bool", "cache_hit": "bool", "cache_key": "text",
    # customer (the observability params, grouping and feedback among them, are added below)
    "customer_identifier": "text", "customer_email": "text", "customer_name": "text", "customer_params": "json",
    "note": "text",
    # prompt management and limits
    "prompt_id": "text", "prompt_version_number": "int", "limit_info": "json", "prompt_name": "text",
    "prompt_messages_template": "json",
    # content (dropped by disable_log)
    "disable_log": "bool", "prompt_messages": "json", "completion_message": "json", "tools": "json",
    "tool_choice": "json", "tool_calls": "json", "variables": "json", "full_request": "json",
    "full_response": "json",
}



def _column_kind(type_: Any) -> str:
    args = set(typing.get_args(type_)) or {type_}
    for python, kind in ((bool, "bool"), (int, "int"), (float, "float"), (str, "text")):
        if python in args:
            return kind
    return "json"


# The observability params keep their names and types in the record (one list: ObservabilityParams).
KINDS.update({f.name: _column_kind(f.type) for f in msgspec.structs.fields(ObservabilityParams)})

#: What ``disable_log: true`` keeps out of the record (Respan: messages, prompt, completion, tools, full request/response).
CONTENT_FIELDS = frozenset({
    "prompt_messages", "completion_message", "tools", "tool_choice", "tool_calls", "variables",
    "full_request", "full_response", "prompt_messages_template",
})

#: Fields a PATCH may change; the rest of a record is immutable.
MUTABLE_FIELDS = frozenset({"metadata", "positive_feedback", "note"})


class LogRecord(ObservabilityParams, kw_only=True, omit_defaults=False):
    """One request. JSON fields may hold ``msgspec.Raw`` (bytes passed through undecoded). The fields
    of :class:`~respan_gateway.params.ObservabilityParams` (metadata, properties, the thread, span and
    trace ids, positive_feedback, the unit prices) are inherited: the request's params, as sent."""

    unique_id: str
    gateway_request_id: str | None = None
    tenant: str = "default"
    key_id: str | None = None
    environment: str | None = None
    log_type: str = "chat"
    endpoint: str | None = None
    log_method: str = "inference"
    start_time: float = 0.0
    timestamp: float = 0.0
    latency: float | None = None
    time_to_first_token: float | None = None
    routing_time: float | None = None
    gateway_overhead: float | None = None
    tokens_per_second: float | None = None
    model: str | None = None
    requested_model: str | None = None
    provider_id: str | None = None
    deployment_name: str | None = None
    load_balance_group_id: str | None = None
    status_code: int = 200
    status: str = "success"
    error_message: str | None = None
    warnings: Any = None
    upstream_attempts: int = 0
    stream: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_request_tokens: int = 0
    prompt_cache_hit_tokens: int = 0
    prompt_cache_creation_tokens: int = 0
    reasoning_tokens: int = 0
    usage_estimated: bool = False
    cost: float = 0.0
    cache_enabled: bool = False
    cache_hit: bool = False
    cache_key: str | None = None
    customer_identifier: str | None = None
    customer_email: str | None = None
    customer_name: str | None = None
    customer_params: Any = None
    note: str | None = None
    prompt_id: str | None = None
    prompt_version_number: int | None = None
    limit_info: Any = None
    disable_log: bool = False
    prompt_messages: Any = None
    completion_message: Any = None
    tools: Any = None
    tool_choice: Any = None
    tool_calls: Any = None
    variables: Any = None
    full_request: Any = None
    full_response: Any = None
    # Added by migration 3 (prompt management): the prompt's name and its messages, unrendered.
    prompt_name: str | None = None
    prompt_messages_template: Any = None


assert set(LogRecord.__struct_fields__) == set(KINDS), "KINDS must list every LogRecord field"

COLUMNS: tuple[str, ...] = LogRecord.__struct_fields__
JSON_COLUMNS = frozenset(k for k, v in KINDS.items() if v == "json")

_encode = msgspec.json.Encoder().encode

#: What a stored ``full_request`` holds as its ``messages`` when they are the record's
#: ``prompt_messages`` (a chat or Anthropic Messages prompt, written once, not twice): the logs API
#: puts them back (``store.to_api``), and a text filter on ``full_request`` also looks there.
MESSAGES_IN_PROMPT = "$prompt_messages"
MESSAGES_IN_PROMPT_JSON = msgspec.Raw(_encode(MESSAGES_IN_PROMPT))


_JSON_INDEXES = tuple(i for i, name in enumerate(COLUMNS) if name in JSON_COLUMNS)
_astuple = msgspec.structs.astuple
_JSON_NAMES = tuple(COLUMNS[i] for i in _JSON_INDEXES)
_json_fields = operator.attrgetter(*_JSON_NAMES)
#: What a record weighs besides its JSON fields (the struct, its ids, numbers and short texts).
RECORD_OVERHEAD = 2048


def stored_size(record: LogRecord) -> int:
    """About the bytes ``record`` holds: its JSON fields as the text they are stored as (a field passed
    through undecoded by its length: a chat prompt counts once, as the row holds it, in
    prompt_messages), plus :data:`RECORD_OVERHEAD`. What ``[logging] queue_bytes`` counts.

    A field that holds decoded values (an answer, the metadata) is encoded here, once, and kept as
    its JSON (``msgspec.Raw``): the row, a spill line or a read of the queued record use that."""
    size = RECORD_OVERHEAD
    for name, value in zip(_JSON_NAMES, _json_fields(record)):
        if value is None:
            continue
        if not isinstance(value, msgspec.Raw):
            try:
                value = msgspec.Raw(_encode(value))
            except Exception:  # not encodable: the insert says so (and quarantines it), not the weighing
                continue
            setattr(record, name, value)
        size += len(value)
    return size


def to_row(record: LogRecord) -> tuple[Any, ...]:
    """The record as the parameters of an INSERT, in :data:`COLUMNS` order (JSON columns as text).

    The fields in one C call (``astuple``), then only the JSON columns that hold a value are encoded;
    a ``Raw`` (the request's own bytes: its messages, the full request) is decoded straight from its
    buffer, with no copy to ``bytes`` first."""
    row = list(_astuple(record))
    for i in _JSON_INDEXES:
        value = row[i]
        if value is not None:
            row[i] = str(value, "utf-8") if isinstance(value, msgspec.Raw) else _encode(value).decode()  # no bytes copy
    return tuple(row)
