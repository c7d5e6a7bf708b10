"""The non-OpenAI wire formats of :class:`~respan_gateway.testing.FakeUpstream`: Anthropic, Gemini, Azure
(and, in :mod:`.fake_clouds`, Vertex AI and Bedrock).

The same fake server (same socket, same scenarios, same ``requests`` record) answers these paths in
the provider's own wire format (``wire-formats.md`` sections 4-6)::

    POST /v1/messages                                         Anthropic Messages (stream: named events)
    POST /v1beta/models/{model}:generateContent               Gemini (also /v1/...)
    POST /v1beta/models/{model}:streamGenerateContent?alt=sse Gemini stream (CRLF-framed, no terminator)
    POST /v1beta/models/{model}:embedContent | :batchEmbedContents
    POST /openai/deployments/{deployment}/chat/completions?api-version=...   Azure OpenAI
    POST /openai/deployments/{deployment}/embeddings?api-version=...

The scenario comes from ``x-fake-scenario`` or from the model name as for OpenAI; for Gemini the model
is the one in the path, for Azure the deployment. Every fault token works; errors use the provider's
own error envelope (Anthropic ``{"type":"error",...}``, Gemini ``{"error":{code,message,status}}``,
Azure ``{"error":{code,message}}``), and ``midstream-error`` sends the provider's mid-stream error
(Anthropic ``event: error``, Gemini ``data: {"error":...}``, Azure as OpenAI).

Tokens that shape answers for every wire (OpenAI's included):
``finish-<reason>`` (the provider's own stop reason, e.g. ``finish-max_tokens``, ``finish-safety``,
``finish-length``), ``cache-read-<n>`` / ``cache-write-<n>`` (cached prompt tokens reported in usage).

Auth is checked the way the provider does, so that tests can assert which credential arrived:
Anthropic needs ``x-api-key`` or ``Authorization: Bearer`` and an ``anthropic-version``; Gemini needs
``x-goog-api-key`` (a ``?key=`` is accepted too, and recorded); Azure needs ``api-key`` (or a Bearer
token) and an ``api-version`` query parameter. A missing credential is the provider's 401/403.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import msgspec

from . import fake_clouds as clouds

if TYPE_CHECKING:
    from .fake_upstream import FakeUpstream, RecordedRequest, Scenario, _Exchange

Message = dict[str, Any]

_GEMINI = re.compile(r"^/(v1|v1beta|v1alpha)/(?:models/)?([^/:]+):(generateContent|streamGenerateContent|embedContent|batchEmbedContents)$")
_AZURE = re.compile(r"^/openai/deployments/([^/]+)/(chat/completions|embeddings)$")

ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
    504: "timeout_error", 529: "overloaded_error",
}
GEMINI_STATUSES = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}


def wire_of(path: str) -> str | None:
    """"anthropic", "gemini", "azure", "vertex", "bedrock", "oauth", or None for OpenAI's paths (``path``:
    the raw path, as sent)."""
    cloud = clouds.wire_of(path)
    if cloud is not None:
        return cloud
    if path in ("/v1/messages", "/messages"):
        return "anthropic"
    if _GEMINI.match(path):
        return "gemini"
    if _AZURE.match(path):
        return "azure"
    return None


def model_of(request: RecordedRequest) -> str | None:
    """The model a request names: in the path for Gemini, Azure, Vertex and Bedrock, else the body's ``model``."""
    cloud = clouds.model_of(request.raw_path)
    if cloud is not None:
        return cloud
    m = _GEMINI.match(request.path)
    if m:
        return m[2]
    m = _AZURE.match(request.path)
    if m:
        return m[1]
    body = request.json
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) else None


async def send_error(ex: _Exchange, wire: str | None, status: int, message: str,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """An error answer in the envelope of ``wire`` (None: OpenAI's)."""
    if wire in ("vertex", "bedrock", "oauth"):
        return await clouds.send_error(ex, wire, status, message, headers)
    if wire == "anthropic":
        kind = ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return await ex.respond(status, {"type": "error", "error": {"type": kind, "message": message},
                                         "request_id": "req_fake"}, headers)
    if wire == "gemini":
        state = GEMINI_STATUSES.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
        return await ex.respond(status, {"error": {"code": status, "message": message, "status": state}}, headers)
    if wire == "azure":
        code = "DeploymentNotFound" if status == 404 else str(status)
        if status == 404:
            message = ("The API deployment for this resource does not exist. If you created the deployment "
                       "within the last 5 minutes, please wait a moment and try again.")
        return await ex.respond(status, {"error": {"code": code, "message": message}}, headers)
    await ex.error(status, message, headers)


#: What each wire says when the prompt is too long ("context-length") or refused by policy ("content-policy").
_REFUSALS = {
    ("openai", "context-length"): ("This model's maximum context length is 128000 tokens. However, your messages "
                                   "resulted in 130532 tokens. Please reduce the length of the messages.",
                                   "invalid_request_error", "context_length_exceeded", "messages"),
    ("openai", "content-policy"): ("Your request was rejected as a result of our safety system.",
                                   "invalid_request_error", "content_policy_violation", None),
    ("anthropic", "context-length"): ("prompt is too long: 210432 tokens > 200000 maximum", None, None, None),
    ("anthropic", "content-policy"): ("Output blocked by content filtering policy", None, None, None),
    ("gemini", "context-length"): ("The input token count (1203412) exceeds the maximum number of tokens allowed (1048576).",
                                   None, None, None),
    ("gemini", "content-policy"): ("The request was blocked because it violates the usage policy.", None, None, None),
    ("azure", "context-length"): ("This model's maximum context length is 128000 tokens. However, your messages "
                                  "resulted in 130532 tokens. Please reduce the length of the messages.",
                                  None, "context_length_exceeded", None),
    ("azure", "content-policy"): ("The response was filtered due to the prompt triggering Azure OpenAI's content "
                                  "management policy.", None, "content_filter", None),
}


async def send_refusal(ex: _Exchange, wire: str | None, fault: str) -> None:
    """A 400 ``context-length`` or ``content-policy`` answer in the envelope and words of ``wire``."""
    message, kind, code, param = _REFUSALS[(wire or "openai", fault)]
    if wire is None:
        return await ex.respond(400, {"error": {"message": message, "type": kind, "param": param, "code": code}})
    if wire == "azure":
        return await ex.respond(400, {"error": {"code": code, "message": message, "param": "prompt", "status": 400}})
    await send_error(ex, wire, 400, message)


async def handle(fake: FakeUpstream, ex: _Exchange, request: RecordedRequest, scenario: Scenario, wire: str) -> None:
    body = request.json
    if request.method != "POST":
        return await send_error(ex, wire, 405, f"method {request.method} not allowed")
    if wire == "oauth":
        return await clouds.token(fake, ex, request)
    if not isinstance(body, dict):
        return await send_error(ex, wire, 400, "the request body is not a JSON object")
    if wire == "anthropic":
        return await _anthropic(fake, ex, request, body, scenario)
    if wire == "gemini":
        if not request.headers.get("x-goog-api-key") and "key" not in parse_qs(request.query):
            return await send_error(ex, "gemini", 403, "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.")
        match = _GEMINI.match(request.path)
        assert match is not None
        return await _gemini(fake, ex, request, body, scenario, match[2], match[3])
    if wire == "vertex":
        return await clouds.vertex(fake, ex, request, body, scenario)
    if wire == "bedrock":
        return await clouds.bedrock(fake, ex, request, body, scenario)
    return await _azure(fake, ex, request, body, scenario)


# -- Anthropic ---------------------------------------------------------------------------------------

async def _anthropic(fake: FakeUpstream, ex: _Exchange, request: RecordedRequest, body: Message, scenario: Scenario) -> None:
    headers = request.headers
    if not headers.get("x-api-key") and not headers.get("authorization", "").startswith("Bearer "):
        return await send_error(ex, "anthropic", 401, "x-api-key header is required")
    if not headers.get("anthropic-version"):
        return await send_error(ex, "anthropic", 400, "anthropic-version: header is required")
    await _anthropic_answer(fake, ex, body, scenario)


async def _anthropic_answer(fake: FakeUpstream, ex: _Exchange, body: Message, scenario: Scenario) -> None:
    """A Messages answer (auth already checked): the Anthropic API's, and Claude's on Vertex AI."""
    from .fake_upstream import TOOL_ARGUMENT_FRAGMENTS, _answer_pieces, continue_pieces

    for field in ("model", "max_tokens", "messages"):
        if field not in body:
            return await send_error(ex, "anthropic", 400, f"{field}: Field required")
    if any(m.get("role") not in ("user", "assistant") for m in body["messages"] if isinstance(m, dict)):
        return await send_error(ex, "anthropic", 400, "messages: roles must be 'user' or 'assistant'")
    model = str(body["model"])
    tool = _anthropic_tool(body, scenario)
    thinking = isinstance(body.get("thinking"), dict) and body["thinking"].get("type") == "enabled"
    pieces = TOOL_ARGUMENT_FRAGMENTS if tool else _answer_pieces(scenario.chunks)
    last = body["messages"][-1] if body["messages"] else None
    if isinstance(last, dict) and last.get("role") == "assistant" and not tool:
        # An assistant prefill: the answer continues it (and, as Anthropic's, refuses a trailing space).
        content = last.get("content")
        prefix = content if isinstance(content, str) else "".join(
            b.get("text", "") for b in content or () if isinstance(b, dict) and b.get("type") == "text")
        if prefix != prefix.rstrip():
            return await send_error(ex, "anthropic", 400, "messages: final assistant content cannot end with trailing whitespace")
        pieces = continue_pieces(pieces, prefix)
    stop_reason = scenario.finish or ("tool_use" if tool else "end_turn")
    stop_sequence = None
    if stop_reason == "stop_sequence":
        stop_sequence = (body.get("stop_sequences") or ["###"])[0]
    usage = {
        "input_tokens": _words(body.get("system")) + _words(body.get("messages")),
        "output_tokens": len(pieces) + (3 if thinking else 0),
        "cache_creation_input_tokens": scenario.cache_write,
        "cache_read_input_tokens": scenario.cache_read,
    }
    msg_id = f"msg_fake{next(fake._ids):06d}"
    tool_id = f"toolu_fake{next(fake._ids):06d}"
    blocks: list[Message] = []
    if thinking:
        blocks.append({"type": "thinking", "thinking": "Let me think.", "signature": "sig_fake"})
    if tool:
        blocks.append({"type": "tool_use", "id": tool_id, "name": tool, "input": {"city": "Paris"}})
    else:
        blocks.append({"type": "text", "text": "".join(pieces)})
    head = {"id": msg_id, "type": "message", "role": "assistant", "model": model}
    if not body.get("stream"):
        return await ex.respond(200, {**head, "content": blocks, "stop_reason": stop_reason,
                                      "stop_sequence": stop_sequence, "usage": usage},
                                [(b"request-id", b"req_fake")])
    start_usage = {"input_tokens": usage["input_tokens"], "output_tokens": 1,
                   "cache_creation_input_tokens": scenario.cache_write, "cache_read_input_tokens": scenario.cache_read}
    events: list[tuple[str, Message]] = [
        ("message_start", {"message": {**head, "content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage}}),
        ("ping", {}),
    ]
    index = 0
    if thinking:
        events += [
            ("content_block_start", {"index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
            ("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me think."}}),
            ("content_block_delta", {"index": 0, "delta": {"type": "signature_delta", "signature": "sig_fake"}}),
            ("content_block_stop", {"index": 0}),
        ]
        index = 1
    if tool:
        events.append(("content_block_start", {"index": index, "content_block": {"type": "tool_use", "id": tool_id, "name": tool, "input": {}}}))
        events += [("content_block_delta", {"index": index, "delta": {"type": "input_json_delta", "partial_json": p}}) for p in pieces]
    else:
        events.append(("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}}))
        events += [("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": p}}) for p in pieces]
    events += [
        ("content_block_stop", {"index": index}),
        ("message_delta", {"delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                           "usage": {"output_tokens": usage["output_tokens"]}}),
        ("message_stop", {}),
    ]
    frames = [_named(name, payload) for name, payload in events]
    error = _named("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}})
    # midstream-error after the first piece of the answer (message_start, ping and the block's start come first).
    await fake._stream(ex, frames, scenario, error_frame=error, error_at=4)


def _anthropic_tool(body: Message, scenario: Scenario) -> str | None:
    tools, choice = body.get("tools") or [], body.get("tool_choice") or {}
    if isinstance(choice, dict) and choice.get("type") == "tool":
        return str(choice.get("name"))
    if (tools and choice.get("type") != "none") or scenario.tool_call:
        return str(tools[0].get("name")) if tools else "fake_tool"
    return None


def _named(name: str, payload: Message) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + msgspec.json.encode({"type": name, **payload}) + b"\n\n"


# -- Gemini ------------------------------------------------------------------------------------------

async def _gemini(fake: FakeUpstream, ex: _Exchange, request: RecordedRequest, body: Message, scenario: Scenario,
                  model: str, method: str) -> None:
    """A generateContent answer (auth already checked): the Gemini API's, and Gemini's on Vertex AI."""
    from .fake_upstream import _answer_pieces, _vector

    query = parse_qs(request.query)
    if method in ("embedContent", "batchEmbedContents"):
        items = body.get("requests") if method == "batchEmbedContents" else [body]
        if not isinstance(items, list) or not items:
            return await send_error(ex, "gemini", 400, "* BatchEmbedContentsRequest.requests: contents is not specified")
        out = []
        for item in items:
            text = " ".join(p.get("text", "") for p in ((item.get("content") or {}).get("parts") or []))
            dims = int(item.get("outputDimensionality") or item.get("output_dimensionality") or 8)
            out.append({"values": _vector(text, dims)})
        return await ex.respond(200, {"embeddings": out} if method == "batchEmbedContents" else {"embedding": out[0]})
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return await send_error(ex, "gemini", 400, "* GenerateContentRequest.contents: contents is not specified")
    if any(c.get("role") not in ("user", "model") for c in contents if isinstance(c, dict)):
        return await send_error(ex, "gemini", 400, "Please use a valid role: user, model.")
    system = body.get("systemInstruction") or body.get("system_instruction") or {}
    prompt = _words(system.get("parts")) + sum(_words(c.get("parts")) for c in contents)
    config = body.get("generationConfig") or body.get("generation_config") or {}
    thoughts = bool((config.get("thinkingConfig") or {}).get("includeThoughts"))
    tool = _gemini_tool(body, scenario)
    pieces = [] if tool else _answer_pieces(scenario.chunks)
    finish = (scenario.finish or "stop").upper()
    usage = {
        "promptTokenCount": prompt + scenario.cache_read, "candidatesTokenCount": len(pieces) or 1,
        "totalTokenCount": prompt + scenario.cache_read + (len(pieces) or 1) + (3 if thoughts else 0),
        "cachedContentTokenCount": scenario.cache_read,
        **({"thoughtsTokenCount": 3} if thoughts else {}),
    }
    head = {"modelVersion": model, "responseId": f"fake{next(fake._ids):06d}"}
    call_part = {"functionCall": {"name": tool, "args": {"city": "Paris"}}} if tool else None
    if method == "generateContent":
        parts: list[Message] = [{"text": "Let me think.", "thought": True}] if thoughts else []
        parts += [call_part] if call_part else [{"text": "".join(pieces)}]
        candidate = {"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0,
                     "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"}]}
        return await ex.respond(200, {"candidates": [candidate], "usageMetadata": usage, **head})
    if query.get("alt") != ["sse"]:
        return await send_error(ex, "gemini", 400, "the fake serves streamGenerateContent with alt=sse only")
    chunks: list[Message] = []
    partial = {"promptTokenCount": usage["promptTokenCount"], "totalTokenCount": usage["promptTokenCount"]}
    if thoughts:
        chunks.append({"candidates": [{"content": {"role": "model", "parts": [{"text": "Let me think.", "thought": True}]}, "index": 0}],
                       "usageMetadata": partial, **head})
    for i, piece in enumerate(pieces or [None]):
        last = i == max(len(pieces), 1) - 1
        part = call_part if piece is None else {"text": piece}
        candidate = {"content": {"role": "model", "parts": [part]}, "index": 0, **({"finishReason": finish} if last else {})}
        chunks.append({"candidates": [candidate], "usageMetadata": usage if last else partial, **head})
    # No terminator in Gemini streams: `no-done` drops the last chunk (the one with finishReason).
    frames = [b"data: " + msgspec.json.encode(c) + b"\r\n\r\n" for c in chunks]
    error = b"data: " + msgspec.json.encode({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}) + b"\r\n\r\n"
    await fake._stream(ex, frames, scenario, error_frame=error)


def _gemini_tool(body: Message, scenario: Scenario) -> str | None:
    declarations = [d for t in body.get("tools") or [] for d in (t.get("functionDeclarations") or t.get("function_declarations") or [])]
    config = (body.get("toolConfig") or body.get("tool_config") or {}).get("functionCallingConfig") or {}
    mode = str(config.get("mode", "AUTO")).upper()
    allowed = config.get("allowedFunctionNames") or []
    if mode == "NONE":
        return None
    if allowed:
        return str(allowed[0])
    if declarations:
        return str(declarations[0].get("name"))
    return "fake_tool" if scenario.tool_call else None


# -- Azure OpenAI ------------------------------------------------------------------------------------

async def _azure(fake: FakeUpstream, ex: _Exchange, request: RecordedRequest, body: Message, scenario: Scenario) -> None:
    match = _AZURE.match(request.path)
    assert match is not None
    deployment, route = match[1], match[2]
    if not request.headers.get("api-key") and not request.headers.get("authorization", "").startswith("Bearer "):
        return await send_error(ex, "azure", 401, "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.")
    if "api-version" not in parse_qs(request.query):
        return await send_error(ex, "azure", 400, "Missing required query parameter: api-version")
    body = {**body, "model": body.get("model") or deployment}
    if route == "embeddings":
        return await fake._embeddings(ex, body)
    preamble = []
    if body.get("stream"):
        # Azure starts a stream with a prompt-filter chunk that has no choices (wire-formats 6).
        preamble = [b"data: " + msgspec.json.encode({
            "id": "", "object": "", "created": 0, "model": "", "choices": [],
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]}) + b"\n\n"]
    await fake._chat(ex, body, scenario, preamble=preamble)


# -- shared helpers ----------------------------------------------------------------------------------

def _words(value: Any) -> int:
    """Whitespace-separated words of every ``text`` (and plain string) inside ``value``."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(v) for v in value)
    if isinstance(value, dict):
        if isinstance(value.get("text"), str):
            return len(value["text"].split())
        return _words(value.get("content")) + _words(value.get("parts"))
    return 0
