"""The record of a finished call, built from ``call`` and the outcome the core completed.

Everything computed is the core's (``call.outcome``: who answered, durations, usage, cost, the cache,
prompt and limit slots); the record adds the request's ids and params, the attempts, and the content
(which :mod:`.privacy` may strip).
"""

from __future__ import annotations

import operator
from typing import Any

from respan_gateway import Call, tokens
from respan_gateway.params import OBSERVABILITY_FIELDS, coerce_metadata
from respan_gateway.translate.responses import output_message

from .privacy import asks_disable_log, strip_content
from .record import MESSAGES_IN_PROMPT_JSON, LogRecord

TOKEN_BREAKDOWN_FLAG = "token-breakdown-2026-03-26"
CLIENT_GONE = 499  # nginx's "client closed request": the client left before the answer ended
_observability = operator.attrgetter(*OBSERVABILITY_FIELDS)  # the params' fields in one call
_RECORD_OBSERVABILITY = _observability(LogRecord(unique_id=""))  # the record's defaults of those fields
LOG_TYPES = {"chat": "chat", "embeddings": "embedding", "responses": "response", "anthropic_messages": "chat"}


def build_record(call: Call) -> LogRecord:
    """The record of ``call``. Built as a bare struct whose fields are then assigned: msgspec's keyword
    ``__init__`` matches each of some 50 keywords against the 71 fields, twice the time of the stores;
    the request's observability params are copied only when any differs from the record's default."""
    o, timings, p = call.outcome, call.timings, call.params
    assert o.log_id is not None, "only a call the logging middleware named has a record"
    record = LogRecord(unique_id=o.log_id)
    values = _observability(p)
    if values != _RECORD_OBSERVABILITY:
        for name, value, default in zip(OBSERVABILITY_FIELDS, values, _RECORD_OBSERVABILITY):
            if value is not default:
                setattr(record, name, value)
    record.metadata = coerce_metadata(p.metadata)
    record.properties = dict(p.properties) if p.properties else None
    principal, customer = call.principal, o.customer
    record.gateway_request_id = call.request_id
    record.tenant, record.key_id, record.environment = principal.tenant, principal.key_id, principal.environment
    record.log_type, record.endpoint = LOG_TYPES.get(call.kind, call.kind), call.kind
    record.start_time, record.timestamp = timings.started_at, timings.started_at + o.latency
    record.latency, record.time_to_first_token = o.latency, o.time_to_first_token
    record.routing_time, record.gateway_overhead = o.routing_time, o.overhead
    record.model, record.requested_model = o.model, call.model
    record.provider_id, record.deployment_name = o.provider, o.deployment
    record.status_code, record.status = o.status, "success" if o.status < 400 else "error"
    record.error_message = _error_message(call)
    record.stream, record.upstream_attempts, record.cost = call.stream, len(call.attempts), o.cost
    record.cache_enabled, record.cache_hit = p.cache_enabled, o.cache_hit
    record.cache_key = o.cache.key if o.cache is not None else None
    if customer is not None:
        record.customer_identifier, record.customer_email, record.customer_name = customer.identifier, customer.email, customer.name
    record.customer_params = p.customer_params
    record.limit_info = o.limits
    record.load_balance_group_id = o.load_balance_group_id or (p.load_balance_group.group_id if p.load_balance_group else None)
    record.disable_log = asks_disable_log(call)
    if o.prompt is not None:
        record.prompt_id, record.prompt_version_number, record.variables = o.prompt.prompt_id, o.prompt.version, o.prompt.variables
        record.prompt_name, record.prompt_messages_template = o.prompt.name, o.prompt.template
    elif p.prompt is not None:
        record.prompt_id = p.prompt.prompt_id
        record.prompt_version_number = p.prompt.version if isinstance(p.prompt.version, int) else None
        record.variables = p.prompt.variables or None
    if call.attempts:
        record.warnings = [
            {"model": a.model, "provider": a.provider, "deployment": a.deployment, "status_code": a.status,
             "error": a.error, "duration": round(a.duration, 6),
             **({"prefill_length": a.prefill} if a.prefill is not None else {})} for a in call.attempts
        ]
    usage = o.usage
    if usage is not None:
        record.prompt_tokens = usage.prompt_tokens
        record.completion_tokens = usage.completion_tokens
        record.total_request_tokens = usage.total_tokens
        record.prompt_cache_hit_tokens = usage.cache_read_tokens
        record.prompt_cache_creation_tokens = usage.cache_write_tokens
        record.reasoning_tokens = usage.reasoning_tokens
        record.usage_estimated = usage.estimated
        generation = o.latency - (o.time_to_first_token or 0.0)
        if usage.completion_tokens and generation > 0:
            record.tokens_per_second = usage.completion_tokens / generation
    if o.answer is not None and (o.stream_end is not None or o.status < 400):
        _answer_content(record, o.answer, streamed=o.stream_end is not None)

    if TOKEN_BREAKDOWN_FLAG in call.beta_flags:
        props = dict(record.properties or {})
        messages = call.prompt()
        props.update(tokens.breakdown(messages if isinstance(messages, list) else [], call.get("tools")))
        props["token_breakdown_method"] = tokens.method()
        record.properties = props

    if record.disable_log:
        strip_content(record)
        return record
    # Chat's messages pass through undecoded; other endpoints' prompt is read as a conversation
    # (a Responses request's instructions and input items: respan_gateway.Call.prompt), a lone string
    # as one user message.
    # A request's own messages are stored once: full_request holds a marker in their place.
    messages = call.body.get("messages")
    prompt = messages or call.prompt()
    record.prompt_messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    record.tools = call.body.get("tools")
    record.tool_choice = call.body.get("tool_choice")
    record.full_request = (call.request_without_params(messages=MESSAGES_IN_PROMPT_JSON) if messages is not None
                           else call.request_without_params())
    return record


def _answer_content(record: LogRecord, answer: Any, *, streamed: bool) -> None:
    """The completion of an answer in its endpoint's shape; a non-streamed one is kept whole too."""
    if not isinstance(answer, dict):
        return
    choices = answer.get("choices")
    if choices:  # chat
        message = choices[0].get("message") if isinstance(choices[0], dict) else None
        if isinstance(message, dict):
            record.completion_message = message
            record.tool_calls = message.get("tool_calls")
    elif "content" in answer:  # Anthropic Messages
        record.completion_message = {"role": "assistant", "content": answer["content"]}
    elif isinstance(answer.get("output"), list):  # Responses: its output items as one readable message
        record.completion_message = output_message(answer["output"])
        record.tool_calls = record.completion_message.get("tool_calls")
    if not streamed:
        record.full_response = answer


def _error_message(call: Call) -> str | None:
    o = call.outcome
    if o.error is not None:
        return o.error.message
    if o.status == CLIENT_GONE:
        if o.stream_end is not None:
            return "the client closed the connection before the stream ended"
        return "the client closed the connection before the answer"
    return None


__all__ = ["LOG_TYPES", "TOKEN_BREAKDOWN_FLAG", "build_record"]
