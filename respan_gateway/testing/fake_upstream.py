"""A fake OpenAI-compatible upstream provider, served over a real loopback socket.

``FakeUpstream`` runs a small pure-ASGI app under hypercorn in a daemon thread (its own event loop)
on ``127.0.0.1:<free port>``. It speaks the OpenAI wire formats of ``wire-formats.md`` sections
1.4-1.6 and 3, and can be told to misbehave, so that tests can drive the gateway (or an SDK) through
every upstream failure mode::

    with FakeUpstream() as fake:
        client = OpenAI(base_url=fake.base_url, api_key="sk-test")
        client.chat.completions.create(model="fake-error-429", messages=[...])  # RateLimitError
        fake.requests[-1].json["model"]                                         # "fake-error-429"

Endpoints (with or without the ``/v1`` prefix):
    ``POST /v1/chat/completions``  text or tool-call answer; ``stream: true`` gives SSE chunks and
                                   honours ``stream_options.include_usage``.
    ``POST /v1/embeddings``        one vector per input item; ``dimensions`` (default 8) and
                                   ``encoding_format`` ("float" default, or "base64").
    ``POST /v1/responses``         OpenAI's Responses API: a ``response`` object (text, or a
                                   ``function_call`` with ``tools``), ``stream: true`` gives the named
                                   event sequence (``response.created`` ... ``response.completed``);
                                   ``previous_response_id`` must name a response this fake made for
                                   the same API key (else 400 ``previous_response_not_found``), as
                                   OpenAI keeps conversations per organisation. Also at
                                   ``/openai/responses?api-version=...`` (Azure: ``api-key`` header).
    ``GET  /v1/models``            an OpenAI model list.

The same server also speaks Anthropic's, Gemini's and Azure OpenAI's wire formats on their own paths
(``/v1/messages``, ``/v1beta/models/{m}:generateContent``, ``/openai/deployments/{d}/...``), with the
same scenarios and the tokens ``finish-<reason>`` and ``cache-read-<n>``/``cache-write-<n>``: see
:mod:`respan_gateway.testing.fake_providers`; and Vertex AI's (Gemini and Claude, with Google's OAuth
token endpoint) and Bedrock's (Converse, SigV4 checked, binary event streams): see
:mod:`respan_gateway.testing.fake_clouds`.

Answers are deterministic: the text is "Hello from the fake upstream!" in ``chunks`` pieces (5 by
default; more pieces repeat its words), ``model`` echoes the request, ``prompt_tokens`` is the number
of whitespace-separated words in the messages' text (embeddings: in the inputs; a token-id list
counts its ids) and ``completion_tokens`` is the number of content pieces (tool calls: argument
fragments). A request with ``tools`` and a ``tool_choice`` other than "none" is answered with one
call to the tool named by ``tool_choice`` or else the first tool, arguments ``{"city":"Paris"}``. A
request for structured output (chat ``response_format`` or Responses ``text.format`` of type
``json_schema``) is answered with a JSON object of the schema's properties (strings ``"Paris"``,
numbers ``21``, booleans ``true``), in two pieces.
A ``stop`` sequence found in the answer text ends the answer before it (``finish_reason`` "stop"), and
the choice names the sequence in ``stop_reason``, as vLLM does.

Scenarios. Taken from the ``x-fake-scenario`` header or, when that is absent, from a request
``model`` starting with ``fake-`` (``model="fake-error-500"`` means ``error-500``). The value is a
comma-separated list of tokens, e.g. ``slow-chunks-20,chunks-50``; of the *fault* tokens (marked F)
the last one wins. An unknown token in the header is a 400 error; in a ``fake-`` model name it is
ignored (so ``model="fake-model"`` is just a model).

    ``ok``                     default answer.
    ``tool_call``              answer with a tool call even without ``tools`` (name "fake_tool").
    ``reasoning``              chat: the answer starts with the reasoning "Let me think." (3 reasoning
                               tokens), as ``message.reasoning_content`` / ``delta.reasoning_content``.
    ``chunks-<n>``             n content pieces (stream and non-stream), default 5.
    ``slow-chunks-<ms>``       streaming: wait <ms> between SSE events.
    ``slow-first-byte-<ms>``   wait <ms> before the response headers (any endpoint).
  F ``error-<status>``         that status (400-599), OpenAI error envelope (type/code per 1.6);
                               429 adds ``retry-after: 1``.
  F ``error-text-<status>``    that status with a ``text/plain`` non-JSON body.
  F ``retry-after-<s>``        429 envelope with ``retry-after: <s>``.
  F ``reset``                  close the TCP connection without any response.
  F ``hang``                   never answer (until the client disconnects or the fake stops).
  F ``cut-after-<n>``          streaming: role chunk + n chunks, then drop the connection mid-body
                               (no finish chunk, no ``[DONE]``, no terminating HTTP chunk).
  F ``stall-after-<n>``        streaming: role chunk + n chunks, then hang until the client leaves.
  F ``malformed-after-<n>``    streaming: role chunk + n chunks, ``data: {not json``, then the rest.
  F ``no-done``                streaming: the whole stream but no ``data: [DONE]``.
  F ``midstream-error``        streaming: role chunk + 2 chunks, ``data: {"error": {...}}``, clean end.
  F ``context-length``         400: the prompt is longer than the model's context, in the provider's own
                               words and shape (OpenAI/Azure ``code: context_length_exceeded``, Anthropic
                               ``prompt is too long``, Gemini ``exceeds the maximum number of tokens``).
  F ``content-policy``         400: the request was refused by the provider's content policy (OpenAI
                               ``content_policy_violation``, Azure ``content_filter``; others in their shape).
    ``reject-prefill``         a 400 when the conversation ends with an assistant message (a model that
                               refuses an assistant prefill).
    ``echo-headers``           the error messages of ``error-<status>`` and ``midstream-error`` quote
                               every request header (``name: value``), as a careless provider or
                               proxy does: for tests that no secret gets past the gateway.
    ``big-<n>``                the answer text is n bytes in one piece (stream: one event of n bytes).
  F ``no-newline-<n>``         streaming: ``data: `` and n bytes that never end their line, then the end.
    ``spaced-json``            streaming: each event's JSON with a space after every colon and comma
                               (``"finish_reason": "stop"``), as Python's ``json.dumps`` writes it.
    ``multiline-data``         streaming: each event's JSON split over two ``data:`` lines (valid SSE:
                               the lines of one event join with a newline, valid JSON whitespace).
    ``odd-shape``              chat streaming: valid JSON of a shape a typed reader rejects in the
                               finish chunk (its choice's ``index`` the string ``"0"``) and the usage
                               chunk (``"choices": "none"``); the other chunks as usual.

Assistant prefill: the Anthropic wire continues a conversation that ends with an assistant message
(as Claude does): the answer is the rest of the fake's text after that prefix (the whole text when it
is not a prefix of it), and a prefill ending in whitespace is Anthropic's 400. The OpenAI wire
ignores a trailing assistant message, as OpenAI does.

The streaming-only faults are ignored by non-streaming requests and other endpoints. Chunk counts
(<n>) count SSE events after the first (role) chunk: content pieces, then the finish chunk, then
the usage chunk.

Fail N times, then succeed: with ``x-fake-fail-times: N`` the first N requests carrying the same
``x-fake-fail-key`` value (absent = "") act out the fault; later ones drop the fault token and
answer normally (``chunks``/``slow-*``/``tool_call`` still apply). ``reset()`` clears the counters.

Every request, faulted or not, is appended to ``requests`` before the fake acts on it.
``open_streams`` counts streaming responses being written; ``wait_for_disconnect()`` turns True
once a client went away while the fake was still answering (mid-stream, or during ``hang`` /
``slow-first-byte``). Hypercorn silently drops sends after a disconnect, so this is detected by
watching the ASGI ``receive()`` channel for ``http.disconnect``.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import re
import socket
import struct
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import msgspec

from ._server import ServerThread
from .fake_clouds import FAKE_AWS_KEY_ID, FAKE_AWS_SECRET
from .fake_providers import handle as handle_wire
from .fake_providers import model_of, send_error, send_refusal, wire_of

__all__ = ["FakeUpstream", "RecordedRequest", "Scenario", "parse_scenario"]

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ANSWER_WORDS = "Hello from the fake upstream!".split()
TOOL_ARGUMENT_FRAGMENTS = ['{"city":', '"Paris"}']
REASONING = "Let me think."
MODELS = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "fake-model"]
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
ERROR_KINDS = {  # status -> (type, code), per wire-formats 1.6
    400: ("invalid_request_error", "invalid_value"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
_log = logging.getLogger(__name__)


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes
    raw_path: str = ""  # the path as sent (percent-encoding kept), e.g. for a SigV4 check
    received: float = 0.0  # time.monotonic() when its body had arrived: the gaps between requests (a wait)

    @property
    def json(self) -> Any:
        """The decoded JSON body, or None when the body is empty or not JSON."""
        try:
            return msgspec.json.decode(self.body) if self.body else None
        except msgspec.DecodeError:
            return None


@dataclass(frozen=True)
class Scenario:
    fault: str | None = None  # "error", "error-text", "retry-after", "reset", "hang", "cut-after", ...
    arg: int = 0  # the fault's number: status, seconds or chunk count
    tool_call: bool = False
    reasoning: bool = False  # chat answers carry reasoning_content
    chunks: int = 5
    chunk_gap: float = 0.0  # seconds
    first_byte_delay: float = 0.0  # seconds
    finish: str | None = None  # the provider's own stop reason (fake_providers)
    cache_read: int = 0  # cached prompt tokens reported in usage
    cache_write: int = 0
    echo_headers: bool = False  # error messages quote the request's headers
    multiline: bool = False  # each SSE event's data on two `data:` lines
    spaced: bool = False  # each SSE event's JSON with spaces after its colons and commas
    odd_shape: bool = False  # chat streams: the finish and usage chunks of a shape a typed reader rejects
    big: int = 0  # the answer text as one piece of this many bytes
    reject_prefill: bool = False  # a 400 for a conversation that ends with an assistant message


_NUMBERED = re.compile(
    r"(error-text|error|retry-after|slow-first-byte|slow-chunks|chunks|cut-after|stall-after|malformed-after"
    r"|cache-read|cache-write|big|no-newline)-(\d+)"
)


def parse_scenario(value: str, *, strict: bool = True) -> Scenario:
    """Parse a comma-separated scenario string; unknown tokens raise ValueError unless not strict."""
    scenario = Scenario()
    for token in filter(None, (t.strip().lower() for t in value.split(","))):
        match = _NUMBERED.fullmatch(token)
        name, number = (match[1], int(match[2])) if match else (token, 0)
        if name == "ok":
            pass
        elif name == "echo-headers":
            scenario = replace(scenario, echo_headers=True)
        elif name in ("tool_call", "tool-call"):
            scenario = replace(scenario, tool_call=True)
        elif name == "reasoning":
            scenario = replace(scenario, reasoning=True)
        elif name == "multiline-data":
            scenario = replace(scenario, multiline=True)
        elif name == "spaced-json":
            scenario = replace(scenario, spaced=True)
        elif name == "odd-shape":
            scenario = replace(scenario, odd_shape=True)
        elif name == "reject-prefill":
            scenario = replace(scenario, reject_prefill=True)
        elif name == "chunks":
            scenario = replace(scenario, chunks=max(number, 1))
        elif name == "slow-chunks":
            scenario = replace(scenario, chunk_gap=number / 1000)
        elif name == "slow-first-byte":
            scenario = replace(scenario, first_byte_delay=number / 1000)
        elif name == "big":
            scenario = replace(scenario, big=number)
        elif name in ("cache-read", "cache-write"):
            scenario = replace(scenario, **{name.replace("-", "_"): number})
        elif name.startswith("finish-") and len(name) > 7:
            scenario = replace(scenario, finish=name[7:])
        elif name in ("error", "error-text") and not 400 <= number <= 599:
            raise ValueError(f"fake scenario {token!r}: the status must be 400-599")
        elif match or name in ("reset", "hang", "no-done", "midstream-error", "context-length", "content-policy"):
            scenario = replace(scenario, fault=name, arg=number)
        elif strict:
            raise ValueError(f"unknown fake scenario token {token!r}")
    return scenario


class _TrackingSocket(socket.socket):
    """The listening socket; remembers accepted connections by peer address (for ``reset``)."""

    accepted: weakref.WeakValueDictionary[Any, socket.socket]

    def accept(self) -> tuple[socket.socket, Any]:
        conn, address = super().accept()
        self.accepted[address] = conn
        return conn, address


class _Exchange:
    """One request/response exchange: the ASGI channels plus disconnect bookkeeping."""

    def __init__(self, fake: FakeUpstream, scope: Message, receive: Receive, send: Send) -> None:
        self.fake, self.scope, self.receive, self._send = fake, scope, receive, send
        self.gone = asyncio.Event()  # the peer disconnected
        self.finished = False  # we are done answering: a disconnect from now on is not the peer's doing
        self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        self.gone.set()
        if not self.finished:
            self.fake._peer_disconnected()

    def close(self) -> None:
        self.finished = True
        self._watcher.cancel()

    async def pause(self, seconds: float | None) -> bool:
        """Sleep (None: forever); True if it was cut short by the peer leaving or the fake stopping."""
        waits = [asyncio.ensure_future(self.gone.wait()), asyncio.ensure_future(self.fake._closing.wait())]
        done, pending = await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return bool(done)

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        request_id = f"req_fake{next(self.fake._ids):06d}".encode()
        # A cookie on every answer, so that tests can check none is ever sent back (tenants share a client).
        headers = [*headers, (b"x-request-id", request_id), (b"set-cookie", b"fake_session=" + request_id + b"; Path=/")]
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def body(self, data: bytes, *, more: bool = False) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def respond(self, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        data = payload if isinstance(payload, bytes) else msgspec.json.encode(payload)
        content_type = b"text/plain; charset=utf-8" if isinstance(payload, bytes) else b"application/json"
        length = str(len(data)).encode()
        await self.start(status, [(b"content-type", content_type), (b"content-length", length), *(headers or [])])
        self.finished = True
        await self.body(data)

    async def error(self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        kind, code = ERROR_KINDS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
        envelope = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        await self.respond(status, envelope, headers)


class FakeUpstream:
    """An OpenAI-compatible fake provider on 127.0.0.1:<free port>, run in a background thread."""

    def __init__(self) -> None:
        self.url = ""
        self.base_url = ""
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._open_streams = 0
        self._disconnected = threading.Event()
        self._fail_counts: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._server: ServerThread | None = None
        # Responses it made: id -> the API key that made it (previous_response_id is per account).
        self.responses: dict[str, str] = {}
        # Cloud auth (fake_clouds): AWS access keys it knows (id -> secret), the SigV4 checks passed,
        # Google service accounts whose JWT signatures it checks (email -> public key PEM), the tokens
        # it issued (token -> JWT claims) or accepts as given, and each token request.
        self.aws_keys: dict[str, str] = {FAKE_AWS_KEY_ID: FAKE_AWS_SECRET}
        self.signed_requests: list[dict[str, Any]] = []
        self.service_accounts: dict[str, str] = {}
        self.oauth_tokens: dict[str, Any] = {}
        self.static_tokens: set[str] = set()
        self.token_requests: list[dict[str, Any]] = []
        self.token_lifetime = 3600

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeUpstream:
        if self._server is not None:
            raise RuntimeError("FakeUpstream already started")
        # The listening socket remembers accepted connections so that `reset` can drop one.
        sock = _TrackingSocket(socket.AF_INET, socket.SOCK_STREAM)
        sock.accepted = weakref.WeakValueDictionary()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        self._sock = sock
        self._server = ServerThread(self._app, name="fake-upstream", sock=sock).start()
        self.url = self._server.url
        self.base_url = self.url + "/v1"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def _closing(self) -> asyncio.Event:
        assert self._server is not None and self._server.closing is not None
        return self._server.closing

    # -- state seen by tests -----------------------------------------------------------------
    @property
    def open_streams(self) -> int:
        with self._lock:
            return self._open_streams

    def accept_token(self, token: str) -> None:
        """Accept ``token`` as a valid Google access token on the Vertex paths (a token "given" in a config)."""
        self.static_tokens.add(token)

    def revoke_tokens(self) -> None:
        """Forget every token issued so far (as if they had expired upstream)."""
        with self._lock:
            self.oauth_tokens.clear()

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.responses.clear()
            self.signed_requests.clear()
            self.token_requests.clear()
            self._fail_counts.clear()
            self._open_streams = 0
            self._disconnected.clear()

    def wait_for_disconnect(self, timeout: float = 30.0) -> bool:
        return self._disconnected.wait(timeout)

    def _peer_disconnected(self) -> None:
        self._disconnected.set()

    def _stream_delta(self, delta: int) -> None:
        with self._lock:
            self._open_streams = max(self._open_streams + delta, 0)

    def _record(self, scope: Message, body: bytes) -> RecordedRequest:
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        query = scope["query_string"].decode("latin-1")
        raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1").partition("?")[0]
        recorded = RecordedRequest(scope["method"], scope["path"], query, headers, body, raw_path, time.monotonic())
        with self._lock:
            self.requests.append(recorded)
        return recorded

    def _scenario(self, request: RecordedRequest) -> Scenario:
        """The request's scenario, with the fault dropped once its fail-times budget is spent."""
        header, model = request.headers.get("x-fake-scenario"), model_of(request)
        if header is not None:
            scenario = parse_scenario(header)
        elif isinstance(model, str) and model.lower().startswith("fake-"):
            scenario = parse_scenario(model[5:], strict=False)
        else:
            scenario = Scenario()
        fail_times = request.headers.get("x-fake-fail-times")
        if fail_times is not None and scenario.fault is not None:
            key = request.headers.get("x-fake-fail-key", "")
            with self._lock:
                self._fail_counts[key] = seen = self._fail_counts.get(key, 0) + 1
            if seen > int(fail_times):
                scenario = replace(scenario, fault=None, arg=0)
        return scenario

    # -- the ASGI app ------------------------------------------------------------------------
    async def _app(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        request = self._record(scope, bytes(body))
        exchange = _Exchange(self, scope, receive, send)
        try:
            await self._dispatch(exchange, request)
        finally:
            exchange.close()

    async def _dispatch(self, ex: _Exchange, request: RecordedRequest) -> None:
        try:
            scenario = self._scenario(request)
        except ValueError as exc:
            return await ex.error(400, str(exc))
        if scenario.first_byte_delay and await ex.pause(scenario.first_byte_delay):
            return
        fault, arg = scenario.fault, scenario.arg
        if fault == "reset":
            return await self._reset(ex)
        if fault == "hang":
            await ex.pause(None)
            return
        wire = wire_of(request.raw_path)
        if fault == "error" or fault == "retry-after":
            status = 429 if fault == "retry-after" else arg
            retry = [(b"retry-after", str(arg if fault == "retry-after" else 1).encode())] if status == 429 else []
            return await send_error(ex, wire, status, f"fake upstream error {status}{_echo(ex, scenario)}", retry)
        if fault == "error-text":
            return await ex.respond(arg, f"fake upstream error {arg}".encode())
        if fault in ("context-length", "content-policy"):
            return await send_refusal(ex, wire, fault)
        if scenario.reject_prefill and _ends_with_assistant(request.json):
            return await send_error(ex, wire, 400, "This model does not support assistant message prefill. "
                                    "The conversation must end with a user message.")
        if wire is not None:
            return await handle_wire(self, ex, request, scenario, wire)

        route = request.path.removeprefix("/v1")
        body = request.json
        if (route, request.method) == ("/models", "GET"):
            created = 1700000000
            models = [{"id": m, "object": "model", "created": created, "owned_by": "fake-upstream"} for m in MODELS]
            return await ex.respond(200, {"object": "list", "data": models})
        if request.method == "POST" and (route == "/responses" or request.path == "/openai/responses"):
            if not isinstance(body, dict):
                return await ex.error(400, "We could not parse the JSON body of your request.")
            return await self._responses(ex, request, body, scenario)
        if request.method == "POST" and route in ("/chat/completions", "/embeddings"):
            if not isinstance(body, dict):
                return await ex.error(400, "We could not parse the JSON body of your request.")
            if route == "/embeddings":
                return await self._embeddings(ex, body)
            return await self._chat(ex, body, scenario)
        await ex.error(404, f"Invalid URL ({request.method} {request.path})")

    async def _reset(self, ex: _Exchange) -> None:
        conn = self._sock.accepted.get(tuple(ex.scope["client"]))
        ex.finished = True
        if conn is None:
            raise RuntimeError("reset: connection not found")
        conn.shutdown(socket.SHUT_RDWR)  # FIN before any response byte; hypercorn then cleans up
        await ex.pause(5)

    # -- chat completions --------------------------------------------------------------------
    async def _chat(self, ex: _Exchange, body: Message, scenario: Scenario, *, preamble: list[bytes] = ()) -> None:
        model = str(body.get("model", "fake-model"))
        tool_name = _tool_name(body, scenario)
        pieces = TOOL_ARGUMENT_FRAGMENTS if tool_name else ["x" * scenario.big] if scenario.big else _answer_pieces(scenario.chunks)
        fmt = body.get("response_format")
        if not tool_name and isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            pieces = _json_pieces((fmt.get("json_schema") or {}).get("schema"))
        matched = None
        if not tool_name:
            pieces, matched = _cut_at_stop(pieces, body.get("stop"))
        reasoning = REASONING if scenario.reasoning else None
        thinking_tokens = 3 if reasoning else 0
        prompt_tokens = _count_words(body.get("messages")) + scenario.cache_read
        usage = {
            "prompt_tokens": prompt_tokens, "completion_tokens": len(pieces) + thinking_tokens,
            "total_tokens": prompt_tokens + len(pieces) + thinking_tokens,
            "prompt_tokens_details": {"cached_tokens": scenario.cache_read, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": thinking_tokens, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        }
        completion_id = f"chatcmpl-fake{next(self._ids):06d}"
        head = {"id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model}
        call_id = f"call_fake{next(self._ids):06d}"
        if not body.get("stream"):
            if tool_name:
                function = {"name": tool_name, "arguments": "".join(pieces)}
                call = {"id": call_id, "type": "function", "function": function}
                message, finish = {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"
            else:
                message = {"role": "assistant", "content": "".join(pieces), "refusal": None, "annotations": []}
                finish = "stop"
            if reasoning:
                message["reasoning_content"] = reasoning
            finish = scenario.finish or finish
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            if matched is not None:
                choice["stop_reason"] = matched
            return await ex.respond(200, {**head, "choices": [choice], "usage": usage,
                                          "service_tier": "default", "system_fingerprint": "fp_fake"})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunks = _stream_chunks(head, pieces, tool_name, call_id, usage if include_usage else None, scenario.finish,
                                reasoning=reasoning, stop_reason=matched)
        if scenario.odd_shape:
            _odd_shape(chunks)
        await self._stream(ex, [*preamble, *(_sse(chunk) for chunk in chunks), b"data: [DONE]\n\n"], scenario)

    async def _stream(self, ex: _Exchange, frames: list[bytes], scenario: Scenario, error_frame: bytes | None = None,
                      headers: list[tuple[bytes, bytes]] = SSE_HEADERS, error_at: int = 3) -> None:
        """Write SSE frames (role chunk first), acting out the streaming faults.

        ``error_frame``: what ``midstream-error`` sends (default: OpenAI's ``data: {"error": ...}``),
        after ``error_at`` frames (by default the role chunk and two pieces of text);
        ``headers``: the response's (Bedrock's binary event stream has its own content type).
        """
        fault, n = scenario.fault, scenario.arg
        ending = "clean"
        if fault in ("cut-after", "stall-after"):
            frames, ending = frames[: 1 + n], fault
        elif fault == "malformed-after":
            frames.insert(1 + n, b"data: {not json\n\n")
        elif fault == "no-done":  # the last frame: OpenAI's [DONE], Gemini's finish, the Responses terminal event
            frames.pop()
        elif fault == "no-newline":  # one line that never ends, written 64 KiB at a time
            frames = [b"data: "] + [b"x" * min(65536, n - i) for i in range(0, n, 65536)]
        elif fault == "midstream-error":
            error = {"message": f"fake upstream mid-stream error{_echo(ex, scenario)}", "type": "server_error", "param": None,
                     "code": "internal_error"}
            frames = frames[:error_at] + [error_frame or _sse({"error": error})]
        if scenario.spaced:
            frames = [_spaced(f) for f in frames]
        if scenario.multiline:
            frames = [_two_data_lines(f) for f in frames]
        self._stream_delta(+1)
        try:
            await ex.start(200, headers)
            for index, frame in enumerate(frames):
                if index and scenario.chunk_gap and await ex.pause(scenario.chunk_gap):
                    return
                # Hypercorn drops sends after a disconnect and they complete at once: yield, so that
                # the watcher sees the disconnect of a peer that leaves a fast stream.
                await asyncio.sleep(0)
                if ex.gone.is_set():
                    return
                await ex.body(frame, more=True)
            if ending == "stall-after":
                await ex.pause(None)
                return
            ex.finished = True
            if ending == "clean":
                await ex.body(b"")
            # cut-after: return with the body still open; hypercorn then closes the connection
            # without the terminating zero-length chunk, so the client sees a truncated body.
        finally:
            self._stream_delta(-1)

    # -- responses ---------------------------------------------------------------------------
    async def _responses(self, ex: _Exchange, request: RecordedRequest, body: Message, scenario: Scenario) -> None:
        """OpenAI's Responses API (wire-formats 2.2-2.3), with the streaming faults of chat."""
        key = request.headers.get("authorization", "") or request.headers.get("api-key", "")
        if request.path == "/openai/responses":
            if not request.headers.get("api-key") and not key.startswith("Bearer "):
                return await send_error(ex, "azure", 401, "Access denied due to invalid subscription key.")
            if "api-version" not in request.query:
                return await send_error(ex, "azure", 400, "Missing required query parameter: api-version")
        previous = body.get("previous_response_id")
        if previous is not None and self.responses.get(previous) != key:
            envelope = {"error": {"message": f"Previous response with id '{previous}' not found.",
                                  "type": "invalid_request_error", "param": "previous_response_id",
                                  "code": "previous_response_not_found"}}
            return await ex.respond(400, envelope)
        rid = f"resp_fake{next(self._ids):06d}"
        with self._lock:
            self.responses[rid] = key
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
        choice = body.get("tool_choice")
        tool_name = None
        if isinstance(choice, dict) and choice.get("name"):
            tool_name = str(choice["name"])
        elif (tools and choice != "none") or scenario.tool_call:
            tool_name = str(tools[0].get("name") if tools else "fake_tool")
        pieces = TOOL_ARGUMENT_FRAGMENTS if tool_name else ["x" * scenario.big] if scenario.big else _answer_pieces(scenario.chunks)
        fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
        if not tool_name and isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            pieces = _json_pieces(fmt.get("schema"))
        words = _count_words([{"content": body.get("instructions")}]) + _count_input_words(body.get("input"))
        usage = {"input_tokens": words + scenario.cache_read,
                 "input_tokens_details": {"cached_tokens": scenario.cache_read, "cache_write_tokens": scenario.cache_write},
                 "output_tokens": len(pieces), "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": words + scenario.cache_read + len(pieces)}
        incomplete = scenario.finish in ("length", "max_output_tokens")
        item_id = f"{'fc' if tool_name else 'msg'}_fake{next(self._ids):06d}"
        text = "".join(pieces)
        if tool_name:
            item = {"id": item_id, "type": "function_call", "status": "completed", "call_id": f"call_fake{next(self._ids):06d}",
                    "name": tool_name, "arguments": text}
        else:
            item = {"id": item_id, "type": "message", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}
        base = {
            "id": rid, "object": "response", "created_at": int(time.time()), "status": "in_progress", "error": None,
            "incomplete_details": None, "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"), "model": str(body.get("model", "fake-model")),
            "output": [], "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": previous, "reasoning": {"effort": None, "summary": None},
            "store": body.get("store", True), "temperature": body.get("temperature", 1.0),
            "text": body.get("text") or {"format": {"type": "text"}}, "tool_choice": choice or "auto",
            "tools": body.get("tools") or [], "top_p": body.get("top_p", 1.0), "truncation": "disabled",
            "usage": None, "user": None, "metadata": body.get("metadata") or {},
        }
        final = {**base, "status": "incomplete" if incomplete else "completed", "output": [item], "usage": usage,
                 "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None}
        if not body.get("stream"):
            return await ex.respond(200, final)
        seq = itertools.count()

        def event(kind: str, **fields: Any) -> bytes:
            return b"event: " + kind.encode() + b"\n" + _sse({"type": kind, "sequence_number": next(seq), **fields})

        ids = {"item_id": item_id, "output_index": 0}
        frames = [event("response.created", response=base), event("response.in_progress", response=base)]
        if tool_name:
            frames.append(event("response.output_item.added", output_index=0, item={**item, "status": "in_progress", "arguments": ""}))
            frames += [event("response.function_call_arguments.delta", **ids, delta=p) for p in pieces]
            frames.append(event("response.function_call_arguments.done", **ids, arguments=text))
        else:
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            frames.append(event("response.output_item.added", output_index=0, item={**item, "status": "in_progress", "content": []}))
            frames.append(event("response.content_part.added", **ids, content_index=0, part=part))
            frames += [event("response.output_text.delta", **ids, content_index=0, delta=p, logprobs=[]) for p in pieces]
            frames.append(event("response.output_text.done", **ids, content_index=0, text=text, logprobs=[]))
            frames.append(event("response.content_part.done", **ids, content_index=0, part={**part, "text": text}))
        frames.append(event("response.output_item.done", output_index=0, item=item))
        frames.append(event("response.incomplete" if incomplete else "response.completed", response=final))
        error = b"event: error\n" + _sse({"type": "error", "sequence_number": 3, "code": "server_error",
                                          "message": f"fake upstream mid-stream error{_echo(ex, scenario)}", "param": None})
        await self._stream(ex, frames, scenario, error_frame=error)

    # -- embeddings --------------------------------------------------------------------------
    async def _embeddings(self, ex: _Exchange, body: Message) -> None:
        raw = body.get("input")
        if raw is None or raw == [] or raw == "":
            return await ex.error(400, "'input' is a required property")
        items = raw if isinstance(raw, list) and raw and isinstance(raw[0], (str, list)) else [raw]
        dimensions = int(body.get("dimensions") or 8)
        as_base64 = body.get("encoding_format") == "base64"
        data, tokens = [], 0
        for index, item in enumerate(items):
            vector = _vector(item, dimensions)
            encoded: Any = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode() if as_base64 else vector
            data.append({"object": "embedding", "index": index, "embedding": encoded})
            tokens += len(item) if isinstance(item, list) else len(str(item).split())
        await ex.respond(200, {"object": "list", "data": data, "model": str(body.get("model", "fake-model")),
                               "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


# -- pure helpers ------------------------------------------------------------------------------
def _echo(ex: _Exchange, scenario: Scenario) -> str:
    """`` (request headers: name: value; ...)`` with ``echo-headers``, else nothing."""
    if not scenario.echo_headers:
        return ""
    headers = "; ".join(f"{k.decode('latin-1')}: {v.decode('latin-1')}" for k, v in ex.scope["headers"])
    return f" (request headers: {headers})"


def _sse(payload: Any) -> bytes:
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"


def _spaced(frame: bytes) -> bytes:
    """``data: {"a":1}`` as ``data: {"a": 1}``; other frames unchanged."""
    if not frame.startswith(b"data: {"):
        return frame
    import json

    return b"data: " + json.dumps(json.loads(frame[6:])).encode() + b"\n\n"


def _two_data_lines(frame: bytes) -> bytes:
    """``data: {"a":1,"b":2}`` as ``data: {"a":1,`` + ``data: "b":2}``; other frames unchanged."""
    head, sep, rest = frame.partition(b',"')
    if not sep or not frame.startswith(b"data: {"):
        return frame
    return head + b',\ndata: "' + rest


def _ends_with_assistant(body: Any) -> bool:
    messages = body.get("messages") if isinstance(body, dict) else None
    return bool(isinstance(messages, list) and messages and isinstance(messages[-1], dict)
                and messages[-1].get("role") == "assistant")


def continue_pieces(pieces: list[str], prefix: str) -> list[str]:
    """The pieces of the answer after ``prefix`` (all of them when the answer does not start with it)."""
    if not prefix or not "".join(pieces).startswith(prefix):
        return pieces
    out, skip = [], len(prefix)
    for piece in pieces:
        if skip >= len(piece):
            skip -= len(piece)
            continue
        out.append(piece[skip:])
        skip = 0
    return out or [""]


def _answer_pieces(n: int) -> list[str]:
    """n pieces of the answer: the sentence split in n groups of words, or its words repeated."""
    words = ANSWER_WORDS if n <= len(ANSWER_WORDS) else [ANSWER_WORDS[i % len(ANSWER_WORDS)] for i in range(n)]
    bounds = [round(i * len(words) / n) for i in range(n + 1)]
    pieces = [" ".join(words[bounds[i]: bounds[i + 1]]) for i in range(n)]
    return [piece + " " for piece in pieces[:-1]] + pieces[-1:]


def _count_words(messages: Any) -> int:
    total = 0
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        parts = content if isinstance(content, list) else [content]
        for part in parts:
            text = part.get("text") if isinstance(part, dict) else part
            total += len(text.split()) if isinstance(text, str) else 0
    return total


def _json_pieces(schema: Any) -> list[str]:
    """Structured output: a JSON object for ``schema`` (strings "Paris", numbers 21, booleans true), in 2 pieces."""
    text = msgspec.json.encode(_example(schema if isinstance(schema, dict) else {})).decode()
    half = len(text) // 2
    return [text[:half], text[half:]]


def _example(schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        return {name: _example(sub if isinstance(sub, dict) else {}) for name, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [_example(schema.get("items") or {})]
    return {"string": "Paris", "integer": 21, "number": 21, "boolean": True}.get(str(kind), "Paris")


def _count_input_words(value: Any) -> int:
    """Words of a Responses ``input``: a string, or the text of its items (messages, function outputs)."""
    if isinstance(value, str):
        return len(value.split())
    total = 0
    for item in value if isinstance(value, list) else []:
        if isinstance(item, dict):
            total += _count_words([item]) + len(str(item.get("output") or "").split())
    return total


def _tool_name(body: Message, scenario: Scenario) -> str | None:
    """The tool to call, or None for a text answer."""
    tools, choice = body.get("tools") or [], body.get("tool_choice")
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return str(choice["function"].get("name") or "fake_tool")
    if tools and choice != "none" or scenario.tool_call:
        first = tools[0].get("function", {}) if tools and isinstance(tools[0], dict) else {}
        return str(first.get("name") or "fake_tool")
    return None


def _cut_at_stop(pieces: list[str], stop: Any) -> tuple[list[str], str | None]:
    """The answer pieces ended before the first ``stop`` sequence found in their text, and that sequence."""
    stops = [stop] if isinstance(stop, str) else [s for s in stop if isinstance(s, str) and s] if isinstance(stop, list) else []
    text = "".join(pieces)
    found = [(text.find(s), s) for s in stops if s and s in text]
    if not found:
        return pieces, None
    cut, matched = min(found)
    kept, seen = [], 0
    for piece in pieces:
        if seen + len(piece) >= cut:
            if cut > seen:
                kept.append(piece[: cut - seen])
            break
        kept.append(piece)
        seen += len(piece)
    return kept, matched


def _stream_chunks(head: Message, pieces: list[str], tool_name: str | None, call_id: str,
                   usage: Message | None, finish_reason: str | None = None, *, reasoning: str | None = None,
                   stop_reason: str | None = None) -> list[Message]:
    """The chunk objects of one streamed completion, as in wire-formats 1.5."""
    if tool_name:
        first: Message = {"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": call_id, "type": "function", "function": {"name": tool_name, "arguments": ""}}]}
        deltas = [{"tool_calls": [{"index": 0, "function": {"arguments": p}}]} for p in pieces]
        finish = "tool_calls"
    else:
        first = {"role": "assistant", "content": "", "refusal": None}
        deltas = [{"content": p} for p in pieces]
        finish = "stop"
    extra = {"usage": None} if usage is not None else {}
    base = {**head, "object": "chat.completion.chunk", "system_fingerprint": "fp_fake"}

    def chunk(delta: Message, finish_reason: str | None = None) -> Message:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        if finish_reason and stop_reason is not None:
            choice["stop_reason"] = stop_reason
        return {**base, "choices": [choice], **extra}

    if reasoning:
        deltas.insert(0, {"reasoning_content": reasoning})
    chunks = [chunk(first), *(chunk(d) for d in deltas), chunk({}, finish_reason or finish)]
    if usage is not None:
        chunks.append({**base, "choices": [], "usage": usage})
    return chunks


def _odd_shape(chunks: list[Message]) -> None:
    """``odd-shape``: the finish chunk's choice ``index`` a string, the usage chunk's ``choices`` one."""
    for chunk in chunks:
        choices = chunk["choices"]
        if not choices:
            chunk["choices"] = "none"
        elif choices[0]["finish_reason"]:
            choices[0]["index"] = "0"


def _vector(item: Any, dimensions: int) -> list[float]:
    """A deterministic vector of exact float32 values in [-1, 1]."""
    seed = sum(item) if isinstance(item, list) and all(isinstance(x, int) for x in item) else sum(str(item).encode())
    return [((seed + 37 * j) % 129 - 64) / 64 for j in range(dimensions)]
