"""Anthropic Messages over OpenAI chat completions: the native Anthropic endpoint served by any provider
adapter that speaks chat (OpenAI, Azure, Gemini, openai_compatible, mock, a third party's).

:data:`MESSAGES_VIA_CHAT` is the :class:`~respan_gateway.endpoints.ChatTranslation` of the endpoint
``anthropic_messages``: :func:`request_to_chat` builds the chat body from a Messages request,
:func:`completion_to_message` turns a ``chat.completion`` into an Anthropic ``message``, and
:class:`MessagesStream` turns ``chat.completion.chunk`` events into Anthropic's event sequence
(``message_start``, ``content_block_start``/``_delta``/``_stop`` per block, ``message_delta`` with the
stop reason and usage, ``message_stop``). The mapping is ``wire-formats.md`` section 4.6, read the other
way; what cannot be honoured on a chat provider (server tools, ``container``, ``mcp_servers``, citations,
document URLs...) is a 400 naming the field, never silently dropped. ``docs/anthropic-endpoint.md``
lists every field.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from ..call import Call, Chunk, aclose
from ..cost import Usage, usage_from
from ..errors import BadRequest, StreamInterrupted, UpstreamError
from ..tokens import estimate

_decode = msgspec.json.decode
_encode = msgspec.json.Encoder().encode

#: OpenAI ``finish_reason`` -> Anthropic ``stop_reason`` (LiteLLM's adapter maps the same way).
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
#: Anthropic ``thinking.budget_tokens`` -> OpenAI ``reasoning_effort``: the smallest budget of each effort
#: (the inverse of the budgets the anthropic plugin gives an effort: low 1024, medium 2048, high 4096).
EFFORT_FOR_BUDGET = ((4096, "high"), (2048, "medium"), (0, "low"))
#: ``output_config.effort`` -> ``reasoning_effort`` (OpenAI has no "max").
EFFORTS = {"low": "low", "medium": "medium", "high": "high", "max": "high"}

# Fields of a Messages request that the translation reads; any other field passes through to the chat
# body unchanged (a provider extension such as the mock's ``mock_response``, or a chat field such as
# ``reasoning_effort``, which then wins over the mapped one), for the provider to judge.
_MAPPED = frozenset({
    "model", "messages", "system", "max_tokens", "stop_sequences", "stream", "temperature", "top_p", "tools",
    "tool_choice", "metadata", "thinking", "output_config", "output_format", "service_tier", "cache_control",
})
# Anthropic features that need Anthropic's servers: a 400 naming the field, on a chat provider.
_REFUSED = {
    "container": "code-execution containers run on Anthropic's servers",
    "mcp_servers": "the MCP connector runs on Anthropic's servers",
    "context_management": "context editing runs on Anthropic's servers",
    "inference_geo": "the inference region is Anthropic's setting",
}


def _refuse(what: str, why: str, param: str) -> BadRequest:
    return BadRequest(f"{what} cannot be honoured by a provider that is not Anthropic: {why}", param=param)


# -- the request -----------------------------------------------------------------------------------
def request_to_chat(body: dict[str, Any], stream: bool = False) -> dict[str, Any]:
    """The OpenAI chat body for an Anthropic Messages body (decoded, Respan params already out)."""
    for name, why in _REFUSED.items():
        if body.get(name) is not None:
            raise _refuse(f"`{name}`", why, name)
    out: dict[str, Any] = {"model": body.get("model")}
    out["messages"] = [*_system(body.get("system")), *_messages(body.get("messages"))]
    max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        out["max_completion_tokens"] = max_tokens  # OpenAI's current name (reasoning models refuse max_tokens)
    stop = body.get("stop_sequences")
    if stop:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise BadRequest("`stop_sequences` must be a list of strings", param="stop_sequences")
        out["stop"] = stop
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise BadRequest("`tools` must be a list", param="tools")
        out["tools"] = [_tool(t, i) for i, t in enumerate(tools)]
    out.update(_tool_choice(body.get("tool_choice"), bool(tools)))
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str) and metadata["user_id"]:
        out["user"] = metadata["user_id"]
    effort = _effort(body.get("thinking"), body.get("output_config"))
    if effort is not None:
        out["reasoning_effort"] = effort
    fmt = _response_format(body.get("output_config"), body.get("output_format"))
    if fmt is not None:
        out["response_format"] = fmt
    for key, value in body.items():
        if key not in _MAPPED:  # a chat field sent as such (e.g. `reasoning_effort`) wins over the mapped one
            out[key] = value
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}  # so that message_delta carries the real counts
    return out


def _system(system: Any) -> list[dict[str, Any]]:
    if system is None or system == "" or system == []:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if isinstance(system, list):
        parts = []
        for i, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise BadRequest(f"`system[{i}]` must be a text block", param="system")
            parts.append(block["text"])
        # One block: a string (what every OpenAI-compatible server takes); several: text parts, as sent.
        content: Any = parts[0] if len(parts) == 1 else [{"type": "text", "text": p} for p in parts]
        return [{"role": "system", "content": content}]
    raise BadRequest("`system` must be a string or a list of text blocks", param="system")


def _messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("`messages` must be a non-empty list", param="messages")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"`messages[{i}]` must be an object", param="messages")
        role, content = message.get("role"), message.get("content")
        if role == "user":
            out += _user(content, i)
        elif role == "assistant":
            out += _assistant(content, i)
        else:
            raise BadRequest(f"`messages[{i}].role` must be \"user\" or \"assistant\", not {role!r}", param="messages")
    return out


def _blocks(content: Any, i: int) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list) and all(isinstance(b, dict) for b in content):
        return content
    raise BadRequest(f"`messages[{i}].content` must be a string or a list of content blocks", param="messages")


def _user(content: Any, i: int) -> list[dict[str, Any]]:
    """A user turn: its tool results first, as ``tool`` messages (OpenAI wants them right after the
    assistant's tool calls), then the rest as one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tool_messages: list[dict[str, Any]] = []
    tool_images: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(_blocks(content, i)):
        where = f"messages[{i}].content[{j}]"
        if block.get("type") == "tool_result":
            text, images = _tool_result(block, where)
            tool_messages.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text})
            tool_images += images
        else:
            parts += _user_part(block, where)
    out = tool_messages
    if tool_images:  # a tool message holds text only: the images it returned follow in a user message
        out.append({"role": "user", "content": tool_images})
    if parts:
        only_text = len(parts) == 1 and parts[0]["type"] == "text"
        out.append({"role": "user", "content": parts[0]["text"] if only_text else parts})
    return out


def _user_part(block: dict[str, Any], where: str) -> list[dict[str, Any]]:
    kind = block.get("type")
    if kind == "text":
        if not isinstance(block.get("text"), str):
            raise BadRequest(f"`{where}.text` must be a string", param="messages")
        return [{"type": "text", "text": block["text"]}]
    if kind == "image":
        return [_image(block, where)]
    if kind == "document":
        return _document(block, where)
    if kind in ("tool_use", "thinking", "redacted_thinking"):
        raise BadRequest(f"`{where}`: a `{kind}` block belongs in an assistant message", param="messages")
    raise _refuse(f"`{where}`: a `{kind}` block", "only text, image, document and tool_result blocks are translated", "messages")


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        url = f"data:{source.get('media_type') or 'image/png'};base64,{source['data']}"
    elif source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise _refuse(f"`{where}.source` of type {source.get('type')!r}", "images go as base64 or URL sources", "messages")
    return {"type": "image_url", "image_url": {"url": url}}


def _document(block: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """A document: a PDF (base64) as an OpenAI ``file`` part, plain text and content sources as text."""
    if isinstance(block.get("citations"), dict) and block["citations"].get("enabled"):
        raise _refuse(f"`{where}.citations`", "citations are an Anthropic feature", "messages")
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    kind = source.get("type")
    if kind == "base64" and isinstance(source.get("data"), str):
        media_type = source.get("media_type") or "application/pdf"
        title = block.get("title") if isinstance(block.get("title"), str) and block.get("title") else "document.pdf"
        return [{"type": "file", "file": {"filename": title, "file_data": f"data:{media_type};base64,{source['data']}"}}]
    if kind == "text" and isinstance(source.get("data"), str):
        return [{"type": "text", "text": source["data"]}]
    if kind == "content":
        parts: list[dict[str, Any]] = []
        for k, inner in enumerate(_blocks(source.get("content"), 0)):
            if inner.get("type") not in ("text", "image"):
                raise BadRequest(f"`{where}.source.content[{k}]` must be a text or image block", param="messages")
            parts += _user_part(inner, f"{where}.source.content[{k}]")
        return parts
    raise _refuse(f"`{where}.source` of type {kind!r}", "documents go as base64, text or content sources "
                  "(chat completions cannot fetch a URL or read Anthropic's Files API)", "messages")


def _tool_result(block: dict[str, Any], where: str) -> tuple[str, list[dict[str, Any]]]:
    """(the text of a tool result, the images it holds)."""
    content = block.get("content")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for k, inner in enumerate(content):
            kind = inner.get("type") if isinstance(inner, dict) else None
            if kind == "text":
                texts.append(str(inner.get("text", "")))
            elif kind == "image":
                images.append(_image(inner, f"{where}.content[{k}]"))
            elif kind == "document":
                parts = _document(inner, f"{where}.content[{k}]")
                texts += [p["text"] for p in parts if p["type"] == "text"]
                images += [p for p in parts if p["type"] != "text"]
            else:
                raise _refuse(f"`{where}.content[{k}]`: a `{kind}` block", "tool results hold text, images and documents", "messages")
    elif content is not None:
        raise BadRequest(f"`{where}.content` must be a string or a list of blocks", param="messages")
    text = "\n".join(texts)
    if block.get("is_error"):
        text = f"Error: {text}" if text else "Error"  # chat has no error flag on a tool result: say it
    return text, images


def _assistant(content: Any, i: int) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "assistant", "content": content}]
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(_blocks(content, i)):
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            arguments = _encode(block.get("input") if block.get("input") is not None else {}).decode()
            calls.append({"id": block.get("id"), "type": "function", "function": {"name": block.get("name"), "arguments": arguments}})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # a chat provider takes no reasoning back: earlier thinking is not sent again
        else:
            raise _refuse(f"`messages[{i}].content[{j}]`: a `{kind}` block", "assistant turns hold text, tool_use and thinking blocks", "messages")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _tool(tool: Any, i: int) -> dict[str, Any]:
    if not isinstance(tool, dict):
        raise BadRequest(f"`tools[{i}]` must be an object", param="tools")
    kind = tool.get("type")
    if kind not in (None, "custom"):
        raise _refuse(f"`tools[{i}]`: the Anthropic tool `{kind}`", "its schema and its server side are Anthropic's; "
                      "declare a custom tool (name, description, input_schema) instead", "tools")
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"`tools[{i}].name` must be a non-empty string", param="tools")
    function: dict[str, Any] = {"name": name, "parameters": tool.get("input_schema") or {"type": "object", "properties": {}}}
    if tool.get("description"):
        function["description"] = tool["description"]
    if tool.get("strict") is True:
        function["strict"] = True
    return {"type": "function", "function": function}


def _tool_choice(choice: Any, has_tools: bool) -> dict[str, Any]:
    if choice is None:
        return {}
    if not isinstance(choice, dict):
        raise BadRequest("`tool_choice` must be an object", param="tool_choice")
    kind = choice.get("type")
    if kind == "auto":
        mapped: Any = "auto"
    elif kind == "any":
        mapped = "required"
    elif kind == "none":
        mapped = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        mapped = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise BadRequest("`tool_choice.type` must be auto, any, tool (with a name) or none", param="tool_choice")
    if not has_tools:
        return {}  # OpenAI refuses a tool_choice without tools; Anthropic ignores it
    out: dict[str, Any] = {"tool_choice": mapped}
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        out["parallel_tool_calls"] = False
    return out


def _effort(thinking: Any, output_config: Any) -> str | None:
    if isinstance(output_config, dict) and output_config.get("effort") is not None:
        effort = output_config["effort"]
        if effort not in EFFORTS:
            raise BadRequest("`output_config.effort` must be low, medium, high or max", param="output_config")
        return EFFORTS[effort]
    if thinking is None:
        return None
    if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled", "adaptive"):
        raise BadRequest("`thinking.type` must be enabled, disabled or adaptive", param="thinking")
    if thinking["type"] != "enabled":
        return None  # disabled: the provider's default; adaptive: the model decides, as it does by default
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or isinstance(budget, bool):
        raise BadRequest("`thinking.budget_tokens` must be an integer", param="thinking")
    return next(effort for least, effort in EFFORT_FOR_BUDGET if budget >= least)


def _response_format(output_config: Any, output_format: Any) -> dict[str, Any] | None:
    fmt = output_config.get("format") if isinstance(output_config, dict) else None
    fmt = fmt if fmt is not None else output_format  # `output_format`: the beta's name for it
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise BadRequest("`output_config.format` must be {\"type\": \"json_schema\", \"schema\": {...}}", param="output_config")
    # Anthropic's structured outputs are guaranteed to match: OpenAI's strict mode is the same promise.
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"], "strict": True}}


# -- the answer ------------------------------------------------------------------------------------
def anthropic_usage(usage: Usage | None) -> dict[str, Any]:
    """Anthropic's ``usage`` for the gateway's :class:`Usage`: ``input_tokens`` counts the uncached input
    only (the cache reads and writes are their own counts)."""
    u = usage if usage is not None else Usage()
    out: dict[str, Any] = {
        "input_tokens": max(0, u.prompt_tokens - u.cache_read_tokens - u.cache_write_tokens),
        "output_tokens": u.completion_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cache_read_tokens,
    }
    if u.reasoning_tokens:
        out["output_tokens_details"] = {"thinking_tokens": u.reasoning_tokens}
    return out


def stop_reason(finish_reason: str | None, matched: Any, stop_sequences: Any, tool_use: bool) -> tuple[str, str | None]:
    """(Anthropic ``stop_reason``, ``stop_sequence``). A stop sequence is named only when the provider
    says which one matched (vLLM's ``stop_reason`` on the choice); OpenAI's plain ``stop`` is ``end_turn``."""
    if finish_reason == "stop" and isinstance(matched, str) and isinstance(stop_sequences, list) and matched in stop_sequences:
        return "stop_sequence", matched
    reason = STOP_REASONS.get(finish_reason or "stop", "end_turn")
    if reason == "end_turn" and tool_use:
        reason = "tool_use"  # a provider that says "stop" after calling tools
    return reason, None


def _usage(call: Call, reported: Usage | None, content: list[dict[str, Any]]) -> Usage:
    """The answer's usage: the adapter's report, else the answer's own, else an estimate (kept as the
    call's, marked ``estimated``): Anthropic's answers always carry usage."""
    usage = call.outcome.usage or reported
    if usage is None:
        usage = call.outcome.usage = estimate(call.prompt(), {"type": "message", "content": content})
    return usage


def _tool_input(arguments: Any, truncated: bool) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    try:
        value = _decode(arguments or "{}")
    except (msgspec.DecodeError, TypeError):
        value = None
    if isinstance(value, dict):
        return value
    if truncated:
        return {}  # cut at max_tokens: Anthropic too ends such a call with what it has
    raise UpstreamError("the provider returned tool-call arguments that are not a JSON object", status=502)


def completion_to_message(completion: dict[str, Any], call: Call) -> dict[str, Any]:
    """An Anthropic ``message`` for a ``chat.completion`` (its first choice)."""
    choices = completion.get("choices") or []
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    finish = choice.get("finish_reason")
    content: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = message.get("content")
    if isinstance(text, list):  # a provider that answers in parts
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
        finish = "content_filter"
    calls = message.get("tool_calls") or []
    for n, tool_call in enumerate(calls):
        function = tool_call.get("function") or {}
        content.append({
            "type": "tool_use", "id": tool_call.get("id") or f"toolu_{call.request_id}_{n}", "name": function.get("name") or "",
            "input": _tool_input(function.get("arguments"), finish == "length"),
        })
    reason, sequence = stop_reason(finish, choice.get("stop_reason"), call.get("stop_sequences"), bool(calls))
    usage = _usage(call, usage_from(completion.get("usage")), content)
    return {
        "id": f"msg_{call.request_id}", "type": "message", "role": "assistant",
        "model": completion.get("model") or (call.target.upstream_model if call.target else call.model) or "",
        "content": content, "stop_reason": reason, "stop_sequence": sequence, "usage": anthropic_usage(usage),
    }


# -- the stream ------------------------------------------------------------------------------------
# Typed views of what the stream reads from chat chunks: decoding only these fields is cheap.
class _Function(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCallDelta(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: _Function | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None  # DeepSeek's, LiteLLM's and the gateway's own translations' name
    reasoning: str | None = None  # vLLM's and OpenRouter's name
    refusal: str | None = None
    tool_calls: list[_ToolCallDelta] | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    delta: _Delta | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None  # vLLM: the stop string (or token id) that ended the answer


class _ChatChunk(msgspec.Struct):
    model: str | None = None
    choices: list[_Choice] | None = None
    usage: dict[str, Any] | None = None
    error: Any = None


_decode_chunk = msgspec.json.Decoder(_ChatChunk).decode


def _event(payload: dict[str, Any]) -> Chunk:
    return Chunk(_encode(payload), payload["type"])


class MessagesStream:
    """Chat chunks in, Anthropic events out: :meth:`feed` returns the events of one chunk, :meth:`end`
    those of the stream's end. Blocks are opened as their first fragment arrives (a ``thinking`` block
    for reasoning, a ``text`` block for content, a ``tool_use`` block per tool call, its arguments as
    ``input_json_delta``) and closed when the next begins or the answer finishes."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.stop_sequences = call.get("stop_sequences")
        self.started = False
        self.blocks = 0  # content blocks opened so far (the next block's index)
        self.open: tuple[str, int] | None = None  # (kind, index) of the open block; kind "tool" with its OpenAI index
        self.tools: dict[int, int] = {}  # OpenAI tool-call index -> Anthropic block index
        self.finish: str | None = None
        self.matched: Any = None  # the stop sequence the provider says ended the answer
        self.refused = False
        self.texts: list[str] = []  # the answer's text, for an estimate when the provider reports no usage
        self.usage: Usage | None = None

    def feed(self, chunk: Chunk) -> list[Chunk]:
        try:
            data = _decode_chunk(chunk.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise StreamInterrupted("the provider sent a stream event that is not a chat.completion.chunk") from None
        if data.error is not None:
            message = data.error.get("message") if isinstance(data.error, dict) else str(data.error)
            raise StreamInterrupted(f"the provider reported an error mid-stream: {message or 'unknown error'}")
        out: list[Chunk] = []
        if not self.started:
            out.append(self._start(data.model))
        if data.usage:
            self.usage = usage_from(data.usage)
        for choice in data.choices or ():
            if choice.index != 0 or self.finish is not None:
                continue
            delta = choice.delta
            if delta is not None:
                reasoning = delta.reasoning_content or delta.reasoning
                if reasoning:
                    out += self._text("thinking", reasoning)
                if delta.content:
                    out += self._text("text", delta.content)
                if delta.refusal:
                    out += self._text("text", delta.refusal)
                    self.refused = True
                for fragment in delta.tool_calls or ():
                    out += self._tool(fragment)
            if choice.finish_reason:
                self.finish = "content_filter" if self.refused else choice.finish_reason
                self.matched = choice.stop_reason
                out += self._close()
        return out

    def end(self) -> list[Chunk]:
        """The answer's end: ``message_delta`` (stop reason, cumulative usage) and ``message_stop``."""
        if self.finish is None:
            raise StreamInterrupted("the provider ended the stream before the answer was complete")
        out = [] if self.started else [self._start(None)]
        reason, sequence = stop_reason(self.finish, self.matched, self.stop_sequences, bool(self.tools))
        usage = _usage(self.call, self.usage, [{"type": "text", "text": "".join(self.texts)}])
        out.append(_event({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
                           "usage": anthropic_usage(usage)}))
        out.append(_event({"type": "message_stop"}))
        return out

    def _start(self, model: str | None) -> Chunk:
        self.started = True
        call = self.call
        model = model or (call.target.upstream_model if call.target else call.model) or ""
        return _event({"type": "message_start", "message": {
            "id": f"msg_{call.request_id}", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0},
        }})

    def _open(self, kind: str, block: dict[str, Any]) -> list[Chunk]:
        out = self._close()
        index = self.blocks
        self.blocks += 1
        self.open = (kind, index)
        out.append(_event({"type": "content_block_start", "index": index, "content_block": block}))
        return out

    def _close(self) -> list[Chunk]:
        if self.open is None:
            return []
        index = self.open[1]
        self.open = None
        return [_event({"type": "content_block_stop", "index": index})]

    def _text(self, kind: str, text: str) -> list[Chunk]:
        out: list[Chunk] = []
        if self.open is None or self.open[0] != kind:
            block = {"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking" else {"type": "text", "text": ""}
            out += self._open(kind, block)
        assert self.open is not None
        if kind == "text":
            self.texts.append(text)
        delta = {"type": "thinking_delta", "thinking": text} if kind == "thinking" else {"type": "text_delta", "text": text}
        out.append(_event({"type": "content_block_delta", "index": self.open[1], "delta": delta}))
        return out

    def _tool(self, fragment: _ToolCallDelta) -> list[Chunk]:
        out: list[Chunk] = []
        index = self.tools.get(fragment.index)
        if index is None:
            function = fragment.function or _Function()
            call_id = fragment.id or f"toolu_{self.call.request_id}_{len(self.tools)}"
            out += self._open("tool", {"type": "tool_use", "id": call_id, "name": function.name or "", "input": {}})
            index = self.tools[fragment.index] = self.blocks - 1
        # A fragment of an earlier call (a provider that interleaves calls) still goes to its own block.
        arguments = fragment.function.arguments if fragment.function is not None else None
        if arguments:
            out.append(_event({"type": "content_block_delta", "index": index,
                               "delta": {"type": "input_json_delta", "partial_json": arguments}}))
        return out


class MessagesViaChat:
    """The :class:`~respan_gateway.endpoints.ChatTranslation` of the native Anthropic endpoint."""

    def request(self, call: Call) -> dict[str, Any]:
        return request_to_chat({k: call.get(k) for k in call.body}, call.stream)

    def answer(self, completion: dict[str, Any], call: Call) -> dict[str, Any]:
        return completion_to_message(completion, call)

    async def stream(self, chunks: AsyncIterator[Chunk], call: Call) -> AsyncIterator[Chunk]:
        state = MessagesStream(call)
        try:
            async for chunk in chunks:
                for event in state.feed(chunk):
                    yield event
            for event in state.end():
                yield event
        finally:
            await aclose(chunks)


#: Set as ``via_chat`` of the ``anthropic_messages`` endpoint.
MESSAGES_VIA_CHAT = MessagesViaChat()

__all__ = [
    "EFFORT_FOR_BUDGET", "MESSAGES_VIA_CHAT", "MessagesStream", "MessagesViaChat", "STOP_REASONS", "anthropic_usage",
    "completion_to_message", "request_to_chat", "stop_reason",
]
