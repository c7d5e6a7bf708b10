"""OpenAI chat <-> Anthropic Messages: the one place that knows this mapping (wire-formats.md 4.6).

Public, in the core, so that every adapter that speaks Anthropic's Messages format (the ``anthropic``
plugin, Claude on Vertex AI) shares it: a plugin never imports another plugin.

Pure functions over decoded JSON: :func:`request_to_anthropic` builds the Messages body from an OpenAI
chat body; :func:`message_to_openai` turns a Message into a ``chat.completion``; :class:`StreamTranslator`
turns Anthropic stream events into ``chat.completion.chunk`` events.
"""

from __future__ import annotations

from typing import Any

import msgspec

from respan_gateway import BadRequest, Chunk, StreamInterrupted
from respan_gateway.cost import Usage, token_count
from respan_gateway.openai_chat import ChunkWriter, completion, parse_data_url, usage

_decode = msgspec.json.decode
_encode = msgspec.json.Encoder().encode

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# OpenAI fields with no Anthropic equivalent that change nothing essential: dropped.
_DROPPED = frozenset({
    "seed", "logit_bias", "presence_penalty", "frequency_penalty", "stream_options", "store", "service_tier",
    "metadata", "prompt_cache_key", "safety_identifier", "verbosity", "modalities", "prediction",
    "web_search_options", "prompt_cache_retention", "top_logprobs",
})
# OpenAI fields mapped below (everything else passes through untouched: top_k, thinking, output_config...).
_MAPPED = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "stop", "tools", "tool_choice",
    "parallel_tool_calls", "user", "response_format", "reasoning_effort", "n", "logprobs", "functions",
    "function_call",
})
_EFFORT_BUDGETS = {"low": 1024, "medium": 2048, "high": 4096, "xhigh": 8192, "max": 16384}

# Anthropic's mid-stream error types, as the status an equivalent HTTP error would have had.
_ERROR_STATUS = {
    "invalid_request_error": 400, "authentication_error": 401, "permission_error": 403, "not_found_error": 404,
    "request_too_large": 413, "rate_limit_error": 429, "api_error": 500, "timeout_error": 504,
    "overloaded_error": 529,
}


def request_to_anthropic(body: dict[str, Any], upstream_model: str, default_max_tokens: int) -> dict[str, Any]:
    """The Anthropic Messages body for an OpenAI chat body (already free of Respan params)."""
    if (body.get("n") or 1) > 1:
        raise BadRequest("Anthropic models return one choice: `n` greater than 1 is not supported", param="n")
    if body.get("logprobs"):
        raise BadRequest("Anthropic models do not return log probabilities: `logprobs` is not supported", param="logprobs")
    if body.get("functions") or body.get("function_call"):
        raise BadRequest("use `tools` and `tool_choice` (the legacy `functions` are not translated)", param="functions")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("`messages` must be a non-empty list", param="messages")

    system, turns = _messages(messages)
    out: dict[str, Any] = {"model": upstream_model}
    if system:
        out["system"] = system
    out["messages"] = turns

    thinking = body.get("thinking")
    effort = body.get("reasoning_effort")
    if thinking is None and isinstance(effort, str) and effort in _EFFORT_BUDGETS:
        thinking = {"type": "enabled", "budget_tokens": _EFFORT_BUDGETS[effort]}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is None:
        max_tokens = default_max_tokens
        budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
        if isinstance(budget, int) and budget >= max_tokens:
            max_tokens = budget + default_max_tokens  # Anthropic needs max_tokens > budget_tokens
    out["max_tokens"] = max_tokens
    if thinking is not None:
        out["thinking"] = thinking

    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    tools = body.get("tools")
    if tools:
        out["tools"] = [_tool(t) for t in tools]
    choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"), bool(tools))
    if choice is not None:
        out["tool_choice"] = choice
    user = body.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_schema", "json_object") and "output_config" not in body:
        schema = (fmt.get("json_schema") or {}).get("schema") if fmt["type"] == "json_schema" else None
        out["output_config"] = {"format": {"type": "json_schema", "schema": schema or {"type": "object"}}}
    for key, value in body.items():
        if key not in _MAPPED and key not in _DROPPED and key not in out and key != "stream":
            out[key] = value
    if body.get("stream"):
        out["stream"] = True
    return out


def _messages(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, alternating user/assistant turns)."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]], first: bool = False) -> None:
        if not blocks:
            return
        if turns and turns[-1]["role"] == role:  # Anthropic wants strictly alternating roles
            turns[-1]["content"] = blocks + turns[-1]["content"] if first else turns[-1]["content"] + blocks
        else:
            turns.append({"role": role, "content": blocks})

    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"`messages[{i}]` must be an object", param="messages")
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system += _text_blocks(content, i)
        elif role == "user":
            add("user", _user_blocks(content, i))
        elif role == "assistant":
            blocks = list(message.get("thinking_blocks") or [])
            blocks += _text_blocks(content, i)
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                arguments = function.get("arguments") or "{}"
                try:
                    args = _decode(arguments) if isinstance(arguments, str) else arguments
                except msgspec.DecodeError:
                    raise BadRequest(f"`messages[{i}].tool_calls`: `arguments` is not valid JSON", param="messages") from None
                blocks.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": args})
            add("assistant", blocks)
        elif role == "tool":
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.get("tool_call_id")}
            if isinstance(content, list):
                result["content"] = _user_blocks(content, i)
            else:
                result["content"] = "" if content is None else str(content)
            # Tool results of one turn go first in one user message.
            last = turns[-1] if turns else None
            if last is not None and last["role"] == "user" and all(b.get("type") == "tool_result" for b in last["content"]):
                last["content"].append(result)
            else:
                add("user", [result], first=True)
        else:
            raise BadRequest(f"`messages[{i}].role`: unknown role {role!r}", param="messages")
    return system, turns


def _text_blocks(content: Any, i: int) -> list[dict[str, Any]]:
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        blocks = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                block = {"type": "text", "text": part.get("text", "")}
                if "cache_control" in part:
                    block["cache_control"] = part["cache_control"]
                blocks.append(block)
            elif isinstance(part, dict) and part.get("type") == "refusal":
                blocks.append({"type": "text", "text": part.get("refusal", "")})
            else:
                raise BadRequest(f"`messages[{i}].content`: only text parts are allowed here", param="messages")
        return blocks
    raise BadRequest(f"`messages[{i}].content` must be a string or a list of parts", param="messages")


def _user_blocks(content: Any, i: int) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return _text_blocks(content, i)
    blocks = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks += _text_blocks([part], i)
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url", "") if isinstance(image, dict) else str(image or "")
            data_url = parse_data_url(url)
            if data_url is not None:
                source = {"type": "base64", "media_type": data_url[0], "data": data_url[1]}
            elif url.startswith(("http://", "https://")):
                source = {"type": "url", "url": url}
            else:
                raise BadRequest(f"`messages[{i}]`: an image_url must be an http(s) or base64 data URL", param="messages")
            block = {"type": "image", "source": source}
            if "cache_control" in part:
                block["cache_control"] = part["cache_control"]
            blocks.append(block)
        elif kind == "file":
            file = part.get("file") or {}
            data_url = parse_data_url(file.get("file_data") or "")
            if data_url is None:
                raise BadRequest(f"`messages[{i}]`: a file part needs `file_data` as a base64 data URL", param="messages")
            blocks.append({"type": "document", "source": {"type": "base64", "media_type": data_url[0], "data": data_url[1]}})
        else:
            raise BadRequest(f"`messages[{i}].content`: part type {kind!r} is not supported by Anthropic models", param="messages")
    return blocks


def _tool(tool: Any) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(tool.get("function"), dict):
        raise BadRequest("`tools`: only function tools can be sent to Anthropic models", param="tools")
    function = tool["function"]
    out = {"name": function.get("name"), "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
    if function.get("description"):
        out["description"] = function["description"]
    if "cache_control" in tool:
        out["cache_control"] = tool["cache_control"]
    return out


def _tool_choice(choice: Any, parallel: Any, has_tools: bool) -> dict[str, Any] | None:
    out: dict[str, Any] | None
    if choice is None:
        out = {"type": "auto"} if has_tools and parallel is False else None
    elif choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        out = {"type": "tool", "name": choice["function"].get("name")}
    else:
        raise BadRequest("`tool_choice` must be auto, none, required or a named function", param="tool_choice")
    if out is not None and parallel is False:
        out["disable_parallel_tool_use"] = True
    return out


def normalised_usage(u: dict[str, Any]) -> Usage:
    """The gateway's :class:`Usage` of an Anthropic ``usage`` object, whose ``input_tokens`` excludes the
    cache reads and writes (the gateway's ``prompt_tokens`` includes them)."""
    read, write = token_count(u.get("cache_read_input_tokens")), token_count(u.get("cache_creation_input_tokens"))
    return Usage(prompt_tokens=token_count(u.get("input_tokens")) + read + write, completion_tokens=token_count(u.get("output_tokens")),
                 cache_read_tokens=read, cache_write_tokens=write)


def openai_usage(u: dict[str, Any]) -> dict[str, Any]:
    cache_read = u.get("cache_read_input_tokens") or 0
    cache_write = u.get("cache_creation_input_tokens") or 0
    prompt = (u.get("input_tokens") or 0) + cache_read + cache_write
    return usage(prompt, u.get("output_tokens") or 0, cached=cache_read, cache_write=cache_write)


def message_to_openai(message: dict[str, Any]) -> dict[str, Any]:
    """A ``chat.completion`` for an Anthropic Message."""
    texts, calls, thinking, thinking_blocks = [], [], [], []
    for block in message.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            calls.append({"id": block.get("id"), "name": block.get("name"), "arguments": _encode(block.get("input") or {}).decode()})
        elif kind in ("thinking", "redacted_thinking"):
            thinking.append(block.get("thinking", ""))
            thinking_blocks.append(block)
    extra: dict[str, Any] = {}
    if thinking_blocks:
        extra = {"reasoning_content": "".join(thinking), "thinking_blocks": thinking_blocks}
    return completion(
        id=message.get("id") or "msg_unknown",
        model=message.get("model") or "",
        content="".join(texts) if texts or not calls else None,
        finish_reason=STOP_REASONS.get(message.get("stop_reason") or "end_turn", "stop"),
        tool_calls=calls,
        usage=openai_usage(message.get("usage") or {}),
        extra_message=extra,
    )


def stream_error(event: dict[str, Any], provider: str) -> StreamInterrupted:
    error = event.get("error") if isinstance(event.get("error"), dict) else {}
    kind = error.get("type") or "api_error"
    return StreamInterrupted(
        f"provider `{provider}` reported an error mid-stream: {error.get('message') or kind}",
        provider=provider, status=_ERROR_STATUS.get(kind, 502), code=kind,
    )


class StreamTranslator:
    """Anthropic stream events in, OpenAI chunks out (``feed`` returns the chunks for one event)."""

    def __init__(self, provider: str, include_usage: bool) -> None:
        self.provider = provider
        self.include_usage = include_usage
        self.writer: ChunkWriter | None = None
        self.usage: dict[str, Any] = {}
        self.done = False
        # message_delta (with the stop reason) seen: the answer is complete even if message_stop never comes.
        self.finished = False
        self._tool_index: dict[int, int] = {}  # Anthropic block index -> OpenAI tool-call index

    def feed(self, event: dict[str, Any]) -> list[Chunk]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self.usage = dict(message.get("usage") or {})
            self.writer = ChunkWriter(message.get("id") or "msg_unknown", message.get("model") or "", include_usage=self.include_usage)
            return [self.writer.role()]
        if kind == "error":
            raise stream_error(event, self.provider)
        if kind == "ping" or kind is None:
            return []
        writer = self.writer
        if writer is None:
            raise StreamInterrupted(f"provider `{self.provider}` sent {kind!r} before message_start", provider=self.provider)
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                self._tool_index[event.get("index", 0)] = writer.tool_calls
                return [writer.tool_call(block.get("id") or "", block.get("name") or "")]
            if block.get("type") == "text" and block.get("text"):
                return [writer.text(block["text"])]
            return []
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta":
                return [writer.text(delta.get("text", ""))]
            if dtype == "input_json_delta":
                fragment = delta.get("partial_json", "")
                index = self._tool_index.get(event.get("index", 0))
                return [writer.tool_arguments(fragment, index)] if fragment else []
            if dtype == "thinking_delta":
                return [writer.reasoning(delta.get("thinking", ""))]
            return []  # signature_delta, citations_delta
        if kind == "message_delta":
            self.usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
            reason = (event.get("delta") or {}).get("stop_reason")
            self.finished = True
            return [writer.finish(STOP_REASONS.get(reason or "end_turn", "stop"))]
        if kind == "message_stop":
            return self.close()
        return []  # content_block_stop, unknown future events

    def close(self) -> list[Chunk]:
        """The end of the answer (message_stop, or the body's end): the usage chunk if asked for."""
        if self.done:
            return []
        if not self.finished or self.writer is None:
            raise StreamInterrupted(f"provider `{self.provider}` ended the stream before the answer was complete", provider=self.provider)
        self.done = True
        return [self.writer.usage_chunk(openai_usage(self.usage))] if self.include_usage else []
