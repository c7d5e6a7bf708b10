"""The logging middleware: one record per request, completed when the answer (or stream) ends.

It runs right after ``auth`` and before ``params``: a request rejected by params validation (400) is
logged, and every record has a tenant. Unauthenticated requests (401) are not logged: they belong to
no tenant. What the record needs from later stages it reads at the end of the request: the typed
params, ``call.target`` / ``call.attempts`` (routing and reliability), and these ``call.state`` keys
that other plugins may set:

``omit_log`` (bool)       no record (a cache hit with ``cache_options.omit_log``)
``cache_hit`` (bool)      answered from the cache: model ``respan/cache``, cost 0
``cache_key`` (str)       the cache key
``limit_info`` (dict)     the limits checked (budgets, rate limits)
``prompt`` (dict)         ``prompt_id``, ``version`` (int) and ``variables`` of a managed prompt
``load_balance_group_id`` (str)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import structlog

from respan_gateway import Call, CallNext, Chunk, GatewayError, JSONResult, RespanParams, Result, StreamResult
from respan_gateway import cost as costs
from respan_gateway import tokens
from respan_gateway.cost import Usage
from respan_gateway.params import PARAM_NAMES

from respan_gateway.hookspecs import RequestLogReader

from .reader import LogReader
from .record import CONTENT_FIELDS, LogRecord, coerce_metadata

log = structlog.get_logger("respan_gateway.logging")

TOKEN_BREAKDOWN_FLAG = "token-breakdown-2026-03-26"
LOG_ID_HEADER = "x-respan-log-id"
CLIENT_GONE = 499  # nginx's "client closed request": the client left before the answer ended
LOG_TYPES = {"chat": "chat", "embeddings": "embedding", "responses": "response", "anthropic_messages": "chat"}
_NESTED_PARAMS = ("respan_params", "keywordsai_params")

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode


# Typed views of what the record reads from answers: decoding only these fields is cheap.
class _Function(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCallDelta(msgspec.Struct):
    index: int = 0
    id: str | None = None
    type: str | None = None
    function: _Function | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_ToolCallDelta] | None = None


class _ChunkChoice(msgspec.Struct):
    index: int = 0
    delta: _Delta | None = None
    finish_reason: str | None = None


class _ChatChunk(msgspec.Struct):
    model: str | None = None
    choices: list[_ChunkChoice] | None = None
    usage: dict[str, Any] | None = None


_NONE = msgspec.Raw(b"")  # msgspec.Raw cannot be in a union with None: an empty Raw means absent


class _Choice(msgspec.Struct):
    index: int = 0
    message: msgspec.Raw = _NONE


class _Answer(msgspec.Struct):
    choices: list[_Choice] | None = None
    usage: dict[str, Any] | None = None
    # Anthropic Messages / Responses answers.
    content: msgspec.Raw = _NONE
    output: msgspec.Raw = _NONE


_decode_chunk = msgspec.json.Decoder(_ChatChunk).decode
_decode_answer = msgspec.json.Decoder(_Answer).decode


class StreamAccumulator:
    """Assembles a streamed answer: completion text, tool calls, and the usage of the final chunk."""

    __slots__ = ("kind", "text", "tool_calls", "usage", "finish_reason")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.text: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.usage: Usage | None = None
        self.finish_reason: str | None = None

    def feed(self, data: bytes) -> None:
        try:
            if self.kind in ("chat", "embeddings"):
                self._feed_chat(_decode_chunk(data))
            else:
                self._feed_event(_decode(data))
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass  # a chunk we cannot read is relayed all the same

    def _feed_chat(self, chunk: _ChatChunk) -> None:
        if chunk.usage:
            self.usage = costs.usage_from(chunk.usage) or self.usage
        for choice in chunk.choices or ():
            if choice.index != 0:
                continue
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
            delta = choice.delta
            if delta is None:
                continue
            if delta.content:
                self.text.append(delta.content)
            for call in delta.tool_calls or ():
                slot = self.tool_calls.setdefault(call.index, {"id": None, "type": "function",
                                                               "function": {"name": "", "arguments": ""}})
                if call.id:
                    slot["id"] = call.id
                if call.function is not None:
                    if call.function.name:
                        slot["function"]["name"] += call.function.name
                    if call.function.arguments:
                        slot["function"]["arguments"] += call.function.arguments

    def _feed_event(self, event: Any) -> None:
        """Anthropic Messages events and Responses events (native endpoints)."""
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if kind == "message_start":
            self.usage = costs.usage_from((event.get("message") or {}).get("usage")) or self.usage
        elif kind == "content_block_delta":
            delta = event.get("delta") or {}
            if isinstance(delta.get("text"), str):
                self.text.append(delta["text"])
        elif kind == "message_delta":
            out = (event.get("usage") or {}).get("output_tokens")
            if self.usage is not None and isinstance(out, int):
                self.usage.completion_tokens = out
        elif kind == "response.output_text.delta":
            if isinstance(event.get("delta"), str):
                self.text.append(event["delta"])
        elif kind == "response.completed":
            self.usage = costs.usage_from((event.get("response") or {}).get("usage")) or self.usage

    def completion_text(self) -> str:
        return "".join(self.text)

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.completion_text() or None}
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return message


class LoggingMiddleware:
    def __init__(self, settings: Any, gateway: Any) -> None:
        from .store import RequestLogStore
        from .writer import RecordWriter

        self.settings = settings
        self.gateway = gateway
        self.store: RequestLogStore | None = None
        self.writer = RecordWriter(self, settings)
        tokens.use(settings.tokenizer)
        # Callbacks ``fn(record, call)`` run for every finished request (metrics), omitted ones included.
        self.subscribers: list[Callable[[LogRecord, Call], None]] = []
        # The one way other plugins (and the logs API) read the records: hookspecs.RequestLogReader.
        gateway.provide(RequestLogReader, LogReader(self))

    def subscribe(self, callback: Callable[[LogRecord, Call], None]) -> None:
        self.subscribers.append(callback)

    # -- life cycle ---------------------------------------------------------------------------
    async def startup(self) -> None:
        from .store import RequestLogStore

        if self.gateway.database is None:
            raise RuntimeError("the logging plugin needs the gateway's database (register_stores did not run)")
        self.store = RequestLogStore(self.gateway.database)
        self.writer.start()

    async def shutdown(self) -> None:
        await self.writer.close()

    async def ready(self) -> bool:
        """``/readyz``: false while the store refuses writes (records go to the spill file meanwhile)."""
        return self.writer.store_up

    async def insert(self, records: list[LogRecord]) -> None:
        """The writer's sink."""
        if self.store is None:
            raise RuntimeError("the request log store is not started")
        await self.store.insert(records)

    # -- per request --------------------------------------------------------------------------
    async def __call__(self, call: Call, call_next: CallNext) -> Result:
        log_id = str(uuid.uuid4())
        call.response_headers[LOG_ID_HEADER] = log_id
        call.state["log_id"] = log_id
        try:
            result = await call_next(call)
        except GatewayError as exc:
            self._finish(call, log_id, status=exc.status, error=exc.message)
            raise
        except asyncio.CancelledError:
            self._finish(call, log_id, status=CLIENT_GONE, error="the client closed the connection before the answer")
            raise
        except Exception as exc:
            self._finish(call, log_id, status=500, error=f"internal gateway error ({type(exc).__name__})")
            raise
        returned = time.perf_counter()
        if call.state.get("omit_log"):
            call.response_headers.pop(LOG_ID_HEADER, None)
        if isinstance(result, StreamResult):
            result.chunks = self._relay(call, log_id, result.chunks, result.status, returned)
            return result
        record = self._finish(call, log_id, status=result.status, answer=result, returned=returned)
        if record is not None and call.params.request_breakdown and call.kind in ("chat", "embeddings") \
                and result.status < 400:
            data = result.data
            if isinstance(data, dict):
                data["request_breakdown"] = breakdown(record, call)
                result.data = data
        return result

    async def _relay(self, call: Call, log_id: str, chunks: AsyncIterator[Chunk], status: int,
                     returned: float) -> AsyncIterator[Chunk]:
        acc = StreamAccumulator(call.kind)
        first: float | None = None
        ended = False
        error: str | None = None
        try:
            async for chunk in chunks:
                if first is None:
                    first = time.perf_counter()
                    call.timings.first_byte = first
                acc.feed(chunk.data)
                yield chunk
            ended = True
        except GatewayError as exc:
            status, error = exc.status, exc.message
            raise
        except (GeneratorExit, asyncio.CancelledError):
            status, error = CLIENT_GONE, "the client closed the connection before the stream ended"
            raise
        except Exception as exc:
            status, error = 500, f"internal gateway error while streaming ({type(exc).__name__})"
            raise
        finally:
            if not ended:
                try:
                    await chunks.aclose()  # type: ignore[attr-defined]
                except Exception:
                    pass
                self._finish(call, log_id, status=status, error=error, stream=acc, returned=returned, first=first)
        record = self._finish(call, log_id, status=status, stream=acc, returned=returned, first=first)
        if record is not None and call.params.request_breakdown and call.kind == "chat":
            yield Chunk(_encode(breakdown_chunk(record, call)))

    # -- the record ---------------------------------------------------------------------------
    def _finish(self, call: Call, log_id: str, *, status: int, error: str | None = None,
                answer: JSONResult | None = None, stream: StreamAccumulator | None = None,
                returned: float | None = None, first: float | None = None) -> LogRecord | None:
        try:
            record = build_record(self.gateway, call, log_id, status=status, error=error, answer=answer,
                                  stream=stream, returned=returned, first=first)
        except Exception:  # a record we cannot build must not fail the request
            log.exception("request_log_build_failed", request_id=call.request_id)
            return None
        for callback in self.subscribers:
            try:
                callback(record, call)
            except Exception:
                log.exception("request_log_subscriber_failed")
        if call.state.get("omit_log"):
            return record
        self.writer.put(record)
        return record


def build_record(gateway: Any, call: Call, log_id: str, *, status: int, error: str | None,
                 answer: JSONResult | None, stream: StreamAccumulator | None,
                 returned: float | None, first: float | None) -> LogRecord:
    now = time.perf_counter()
    timings = call.timings
    p = call.params
    state = call.state
    latency = now - timings.start
    record = LogRecord(
        unique_id=log_id,
        gateway_request_id=call.request_id,
        tenant=call.principal.tenant,
        key_id=call.principal.key_id,
        environment=call.principal.environment,
        log_type=LOG_TYPES.get(call.kind, call.kind),
        endpoint=call.kind,
        start_time=timings.started_at,
        timestamp=timings.started_at + latency,
        latency=latency,
        requested_model=call.model,
        status_code=status,
        status="success" if status < 400 else "error",
        error_message=error,
        stream=call.stream,
        upstream_attempts=len(call.attempts),
        cache_enabled=p.cache_enabled,
        cache_hit=bool(state.get("cache_hit")),
        cache_key=state.get("cache_key"),
        customer_identifier=str(p.customer_identifier) if p.customer_identifier is not None else None,
        customer_email=p.customer_email,
        customer_name=p.customer_name,
        customer_params=p.customer_params,
        metadata=coerce_metadata(p.metadata),
        properties=dict(p.properties) if p.properties else None,
        custom_identifier=p.custom_identifier,
        thread_identifier=p.thread_identifier,
        group_identifier=p.group_identifier,
        span_name=p.span_name,
        trace_unique_id=p.trace_unique_id,
        span_unique_id=p.span_unique_id,
        span_parent_id=p.span_parent_id,
        span_workflow_name=p.span_workflow_name,
        trace_group_identifier=p.trace_group_identifier,
        session_identifier=p.session_identifier,
        positive_feedback=p.positive_feedback,
        prompt_unit_price=p.prompt_unit_price,
        completion_unit_price=p.completion_unit_price,
        limit_info=state.get("limit_info"),
        load_balance_group_id=state.get("load_balance_group_id") or (p.load_balance_group.group_id if p.load_balance_group else None),
        disable_log=p.disable_log or _asks_disable_log(call),
    )
    if p.customer_params is not None and record.customer_identifier is None and p.customer_params.customer_identifier is not None:
        record.customer_identifier = str(p.customer_params.customer_identifier)
    prompt = state.get("prompt")
    if isinstance(prompt, dict):
        record.prompt_id = prompt.get("prompt_id")
        version = prompt.get("version")
        record.prompt_version_number = version if isinstance(version, int) else None
        record.variables = prompt.get("variables")
    elif p.prompt is not None:
        record.prompt_id = p.prompt.prompt_id
        record.prompt_version_number = p.prompt.version if isinstance(p.prompt.version, int) else None
        record.variables = p.prompt.variables or None

    # Which model answered: the last successful attempt, else the last one tried, else the request's.
    answered = next((a for a in reversed(call.attempts) if a.error is None and (a.status or 200) < 400), None)
    last = answered or (call.attempts[-1] if call.attempts else None)
    if last is not None:
        record.model, record.provider_id, record.deployment_name = last.model, last.provider, last.deployment
    elif call.target is not None:
        record.model, record.provider_id, record.deployment_name = call.target.model, call.target.provider, call.target.deployment
    else:
        record.model = call.model
    if record.cache_hit:
        record.model, record.provider_id = "respan/cache", None
    if call.attempts:
        record.warnings = [
            {"model": a.model, "provider": a.provider, "deployment": a.deployment, "status_code": a.status,
             "error": a.error, "duration": round(a.duration, 6)} for a in call.attempts
        ]

    # Timings.
    if timings.upstream_start is not None:
        record.routing_time = max(0.0, timings.upstream_start - timings.start)
    upstream = sum(a.duration for a in call.attempts)
    # Time in the gateway itself: up to the answer (the stream head, or the error), less the upstream
    # attempts. Retry back-off waits count as gateway time.
    record.gateway_overhead = max(0.0, ((returned if returned is not None else now) - timings.start) - upstream)
    if first is not None:
        record.time_to_first_token = first - timings.start

    # Content and usage.
    messages_raw = call.body.get("messages") or call.body.get("input")
    usage: Usage | None = None
    completion_text = ""
    if answer is not None and status < 400:
        usage, completion_text = _read_answer(record, answer, call)
    elif stream is not None:
        usage = stream.usage
        completion_text = stream.completion_text()
        if call.kind in ("chat", "embeddings"):
            message = stream.message()
            record.completion_message = message
            record.tool_calls = message.get("tool_calls")
        elif completion_text:
            record.completion_message = {"role": "assistant", "content": completion_text}
    if usage is None and (stream is not None or (answer is not None and status < 400)):
        # The provider reported no usage (or the stream was cut before it): count the tokens ourselves.
        usage = _estimate(messages_raw, completion_text, record.tool_calls, call)
    if usage is not None:
        record.prompt_tokens = usage.prompt_tokens
        record.completion_tokens = usage.completion_tokens
        record.total_request_tokens = usage.total_tokens
        record.prompt_cache_hit_tokens = usage.cache_read_tokens
        record.prompt_cache_creation_tokens = usage.cache_write_tokens
        record.reasoning_tokens = usage.reasoning_tokens
        record.usage_estimated = usage.estimated
        if not record.cache_hit:
            entry = gateway.catalog.entry(record.model) if record.model else None
            record.cost = costs.cost(entry, usage, prompt_unit_price=p.prompt_unit_price,
                                     completion_unit_price=p.completion_unit_price)
        generation = latency - (record.time_to_first_token or 0.0)
        if usage.completion_tokens and generation > 0:
            record.tokens_per_second = usage.completion_tokens / generation

    if TOKEN_BREAKDOWN_FLAG in call.beta_flags:
        props = dict(record.properties or {})
        messages = _decode_raw(messages_raw)
        props.update(tokens.breakdown(messages if isinstance(messages, list) else [], _decode_raw(call.body.get("tools"))))
        props["token_breakdown_method"] = tokens.method()
        record.properties = props

    if record.disable_log:
        for name in CONTENT_FIELDS:  # metrics and ids only: no content anywhere in the row
            setattr(record, name, None)
        return record
    record.prompt_messages = messages_raw
    record.tools = call.body.get("tools")
    record.tool_choice = call.body.get("tool_choice")
    record.full_request = _full_request(call)
    return record


def _read_answer(record: LogRecord, answer: JSONResult, call: Call) -> tuple[Usage | None, str]:
    content = answer.content
    try:
        view = _decode_answer(content)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None, ""
    text = ""
    if view.choices:
        message = view.choices[0].message
        if message:
            record.completion_message = message
            decoded = _decode(message)
            if isinstance(decoded, dict):
                text = tokens.text_of(decoded.get("content"))
                record.tool_calls = decoded.get("tool_calls")
    elif view.content:  # Anthropic Messages
        record.completion_message = {"role": "assistant", "content": view.content}
        text = tokens.text_of(_decode(view.content))
    elif view.output:  # Responses
        record.completion_message = view.output
    if not record.disable_log:
        record.full_response = msgspec.Raw(content)
    return (costs.usage_from(view.usage) if view.usage else None), text


def _estimate(messages_raw: Any, completion_text: str, tool_calls: Any, call: Call) -> Usage:
    messages = _decode_raw(messages_raw)
    if isinstance(messages, list):
        prompt = tokens.count_messages(messages)
    elif isinstance(messages, str):
        prompt = tokens.count(messages)
    else:
        prompt = 0
    completion = tokens.count(completion_text)
    for tool_call in tool_calls or ():
        function = tool_call.get("function") if isinstance(tool_call, dict) else None
        if isinstance(function, dict):
            completion += tokens.count(str(function.get("arguments") or ""))
    return Usage(prompt_tokens=prompt, completion_tokens=completion, estimated=True)


def _decode_raw(value: Any) -> Any:
    if isinstance(value, msgspec.Raw):
        try:
            return _decode(value)
        except msgspec.DecodeError:
            return None
    return value


def _full_request(call: Call) -> Any:
    """The request body without any Respan param (credentials never reach the store)."""
    if call.rejection is not None:  # unreadable, so its params (credentials too) cannot be stripped
        return None
    if not any(k in PARAM_NAMES or k in _NESTED_PARAMS for k in call.body):
        return msgspec.Raw(call.encoded_body())
    return msgspec.Raw(_encode({k: v for k, v in call.body.items() if k not in PARAM_NAMES and k not in _NESTED_PARAMS}))


_NO_PARAMS = RespanParams()


def _asks_disable_log(call: Call) -> bool:
    """disable_log, also for a request rejected before its params were read (params still at their
    defaults): then any mention of disable_log in the body, or a params header, keeps the content out
    of the record. Better no content than a leak."""
    if call.params.disable_log:
        return True
    if call.params != _NO_PARAMS:
        return False
    return b"disable_log" in call.raw_body or any(
        call.headers.get(h) for h in ("x-data-respan-params", "x-data-keywordsai-params"))


# -- request_breakdown ----------------------------------------------------------------------------

def breakdown(record: LogRecord, call: Call) -> dict[str, Any]:
    """The ``request_breakdown`` object (SPEC section 8); cost USD, latency and routing_time seconds."""
    from .store import iso

    content = not record.disable_log
    return {
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "cost": record.cost,
        "prompt_messages": _decode_raw(call.body.get("messages") or call.body.get("input")) if content else None,
        "completion_message": _decode_raw(record.completion_message) if content else None,
        "model": record.model,
        "cached": record.cache_hit,
        "timestamp": iso(record.timestamp),
        "status_code": record.status_code,
        "stream": record.stream,
        "latency": record.latency,
        "time_to_first_token": record.time_to_first_token,
        "routing_time": record.routing_time,
        "full_request": _decode_raw(_full_request(call)) if content else None,
        "metadata": record.metadata or {},
        "usage_estimated": record.usage_estimated,
        "log_id": record.unique_id,
        "category": None,
        "scores": {},
        "sentiment_score": 0,
    }


def breakdown_chunk(record: LogRecord, call: Call) -> dict[str, Any]:
    """The extra final chunk of a stream, ``id: "request_breakdown"``, sent before ``[DONE]``.

    Respan's shape (the breakdown in ``choices[0]``), made a valid chunk for the strict OpenAI SDKs:
    ``usage`` null (Respan sends ``{}``, which lacks the required token counts), an empty delta (the
    role was in the first chunk) and no ``finish_reason`` (the answer already had its own).
    """
    return {
        "id": "request_breakdown",
        "object": "chat.completion.chunk",
        "created": int(record.start_time),
        "model": "extra_parameter",
        "system_fingerprint": None,
        "usage": None,
        "choices": [{
            "index": 0,
            "delta": {},
            "logprobs": None,
            "finish_reason": None,
            "request_breakdown": breakdown(record, call),
        }],
    }


__all__ = ["LoggingMiddleware", "StreamAccumulator", "build_record", "CONTENT_FIELDS"]
