"""OpenAI chat <-> Bedrock Converse: the one place that knows this mapping.

Pure functions over decoded JSON: :func:`request_to_converse` builds the Converse (and ConverseStream)
body from an OpenAI chat body; :func:`converse_to_openai` turns a Converse answer into a
``chat.completion``; :class:`StreamTranslator` turns ConverseStream events (already unframed from
the binary event stream) into ``chat.completion.chunk`` events.
"""

from __future__ import annotations

import os
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
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
# OpenAI fields with no Converse equivalent that change nothing essential: dropped.
_DROPPED = frozenset({
    "seed", "logit_bias", "presence_penalty", "frequency_penalty", "stream_options", "store", "service_tier",
    "metadata", "prompt_cache_key", "safety_identifier", "verbosity", "modalities", "prediction",
    "web_search_options", "prompt_cache_retention", "top_logprobs", "parallel_tool_calls", "user", "stream",
})
# OpenAI fields mapped below.
_MAPPED = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "tools",
    "tool_choice", "response_format", "reasoning_effort", "n", "logprobs", "functions", "function_call",
})
# Converse's own top-level fields: a client may send them as they are (extra_body).
_NATIVE = frozenset({
    "additionalModelRequestFields", "additionalModelResponseFieldPaths", "guardrailConfig", "performanceConfig",
    "promptVariables", "requestMetadata", "inferenceConfig", "toolConfig", "system",
})
_EFFORT_BUDGETS = {"low": 1024, "medium": 2048, "high": 4096, "xhigh": 8192, "max": 16384}
_IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif", "image/webp": "webp"}
_DOCUMENT_FORMATS = {
    "application/pdf": "pdf", "text/csv": "csv", "application/msword": "doc", "text/html": "html", "text/plain": "txt",
    "text/markdown": "md", "application/vnd.ms-excel": "xls",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
}
# ConverseStream exception events (`:exception-type`), as the status the same error has over HTTP.
EXCEPTION_STATUS = {
    "throttlingException": 429, "serviceUnavailableException": 503, "internalServerException": 500,
    "modelStreamErrorException": 502, "validationException": 400, "modelTimeoutException": 504,
}


def request_to_converse(body: dict[str, Any], upstream_model: str) -> dict[str, Any]:
    """The Converse body for an OpenAI chat body (already free of Respan params)."""
    if (body.get("n") or 1) > 1:
        raise BadRequest("Bedrock's Converse API returns one choice: `n` greater than 1 is not supported", param="n")
    if body.get("logprobs"):
        raise BadRequest("Bedrock's Converse API returns no log probabilities: `logprobs` is not supported", param="logprobs")
    if body.get("functions") or body.get("function_call"):
        raise BadRequest("use `tools` and `tool_choice` (the legacy `functions` are not translated)", param="functions")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        raise BadRequest("Bedrock's Converse API has no JSON mode: `response_format` other than text is not supported "
                         "(ask for JSON in the prompt, or use a tool)", param="response_format")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("`messages` must be a non-empty list", param="messages")

    system, turns, tool_history = _messages(messages)
    out: dict[str, Any] = {"messages": turns}
    if system:
        out["system"] = system
    inference: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None:
        inference["maxTokens"] = max_tokens
    for openai_key, converse_key in (("temperature", "temperature"), ("top_p", "topP")):
        if body.get(openai_key) is not None:
            inference[converse_key] = body[openai_key]
    stop = body.get("stop")
    if stop:
        inference["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)

    extra: dict[str, Any] = {}
    effort = body.get("reasoning_effort")
    if isinstance(effort, str) and effort in _EFFORT_BUDGETS and _is_claude(upstream_model):
        budget = _EFFORT_BUDGETS[effort]
        extra["thinking"] = {"type": "enabled", "budget_tokens": budget}
        if "maxTokens" in inference and inference["maxTokens"] <= budget:
            inference["maxTokens"] = budget + 4096  # Claude needs max_tokens > budget_tokens
        elif "maxTokens" not in inference:
            inference["maxTokens"] = budget + 4096

    tools = body.get("tools")
    choice = body.get("tool_choice")
    if tools and (choice != "none" or tool_history):
        # Bedrock refuses toolUse/toolResult blocks without a toolConfig, so "none" keeps the tools when
        # the conversation has tool turns (the Converse API has no "none" choice).
        config: dict[str, Any] = {"tools": [_tool(t) for t in tools]}
        converse_choice = _tool_choice(choice)
        if converse_choice is not None:
            config["toolChoice"] = converse_choice
        out["toolConfig"] = config

    for key, value in body.items():
        if key in _MAPPED or key in _DROPPED:
            continue
        if key == "inferenceConfig" and isinstance(value, dict):
            inference.update(value)  # the client's own settings win
        elif key == "additionalModelRequestFields" and isinstance(value, dict):
            extra.update(value)
        elif key in _NATIVE:
            out[key] = value
        else:
            extra[key] = value  # the model's own parameters (top_k, ...)
    if inference:
        out["inferenceConfig"] = inference
    if extra:
        out["additionalModelRequestFields"] = extra
    return out


def _is_claude(model: str) -> bool:
    return "anthropic." in model or "claude" in model


def _messages(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
    """(system blocks, alternating user/assistant turns, whether the conversation has tool blocks)."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    tool_history = False

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if turns and turns[-1]["role"] == role:  # Converse wants strictly alternating roles
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": role, "content": blocks})

    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"`messages[{i}]` must be an object", param="messages")
        role, content = message.get("role"), message.get("content")
        if role in ("system", "developer"):
            system += _blocks(content, i, text_only=True)
        elif role == "user":
            add("user", _blocks(content, i))
        elif role == "assistant":
            blocks: list[dict[str, Any]] = []
            for thinking in message.get("thinking_blocks") or []:
                if isinstance(thinking, dict) and thinking.get("type") == "thinking":
                    text = {"text": thinking.get("thinking", "")}
                    if thinking.get("signature"):
                        text["signature"] = thinking["signature"]
                    blocks.append({"reasoningContent": {"reasoningText": text}})
            blocks += _blocks(content, i, text_only=True)
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                arguments = function.get("arguments") or "{}"
                try:
                    args = _decode(arguments) if isinstance(arguments, str) else arguments
                except msgspec.DecodeError:
                    raise BadRequest(f"`messages[{i}].tool_calls`: `arguments` is not valid JSON", param="messages") from None
                blocks.append({"toolUse": {"toolUseId": call.get("id"), "name": function.get("name"), "input": args}})
                tool_history = True
            add("assistant", blocks)
        elif role == "tool":
            result_content = _blocks(content, i) if isinstance(content, list) else [{"text": "" if content is None else str(content)}]
            add("user", [{"toolResult": {"toolUseId": message.get("tool_call_id"), "content": result_content}}])
            tool_history = True
        else:
            raise BadRequest(f"`messages[{i}].role`: unknown role {role!r}", param="messages")
    return system, turns, tool_history


def _blocks(content: Any, i: int, *, text_only: bool = False) -> list[dict[str, Any]]:
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"text": content}]
    if not isinstance(content, list):
        raise BadRequest(f"`messages[{i}].content` must be a string or a list of parts", param="messages")
    blocks: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"text": part.get("text", "")})
        elif kind == "refusal":
            blocks.append({"text": part.get("refusal", "")})
        elif text_only:
            raise BadRequest(f"`messages[{i}].content`: only text parts are allowed here", param="messages")
        elif kind == "image_url":
            image = part.get("image_url")
            blocks.append({"image": _image(image.get("url", "") if isinstance(image, dict) else str(image or ""), i)})
        elif kind == "file":
            blocks.append({"document": _document(part.get("file") or {}, i, len(blocks))})
        else:
            raise BadRequest(f"`messages[{i}].content`: part type {kind!r} is not supported by Bedrock's Converse API", param="messages")
        if isinstance(part, dict) and part.get("cache_control"):
            blocks.append({"cachePoint": {"type": "default"}})  # Anthropic-style cache breakpoint after this part
    return blocks


def _image(url: str, i: int) -> dict[str, Any]:
    data_url = parse_data_url(url)
    if data_url is not None:
        fmt = _IMAGE_FORMATS.get(data_url[0].lower())
        if fmt is None:
            raise BadRequest(f"`messages[{i}]`: image type {data_url[0]!r} is not supported (png, jpeg, gif, webp)", param="messages")
        return {"format": fmt, "source": {"bytes": data_url[1]}}
    if url.startswith("s3://"):
        ext = url.rsplit(".", 1)[-1].lower()
        return {"format": "jpeg" if ext == "jpg" else ext, "source": {"s3Location": {"uri": url}}}
    raise BadRequest(f"`messages[{i}]`: Bedrock takes images as base64 data URLs or s3:// URIs, not web URLs", param="messages")


def _document(file: dict[str, Any], i: int, position: int) -> dict[str, Any]:
    data_url = parse_data_url(file.get("file_data") or "")
    if data_url is None:
        raise BadRequest(f"`messages[{i}]`: a file part needs `file_data` as a base64 data URL", param="messages")
    fmt = _DOCUMENT_FORMATS.get(data_url[0].lower())
    if fmt is None:
        raise BadRequest(f"`messages[{i}]`: document type {data_url[0]!r} is not supported by Bedrock", param="messages")
    # Bedrock's document names: letters, digits, spaces, hyphens, parentheses and brackets only.
    stem = (file.get("filename") or f"document {i} {position}").rsplit(".", 1)[0]
    name = "".join(c if c.isalnum() or c in " -()[]" else " " for c in stem).strip() or "document"
    return {"format": fmt, "name": name[:200], "source": {"bytes": data_url[1]}}


def _tool(tool: Any) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(tool.get("function"), dict):
        raise BadRequest("`tools`: only function tools can be sent to Bedrock", param="tools")
    function = tool["function"]
    spec: dict[str, Any] = {"name": function.get("name"),
                            "inputSchema": {"json": function.get("parameters") or {"type": "object", "properties": {}}}}
    if function.get("description"):
        spec["description"] = function["description"]
    return {"toolSpec": spec}


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None or choice in ("auto", "none"):
        return {"auto": {}} if choice == "auto" else None
    if choice == "required":
        return {"any": {}}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return {"tool": {"name": choice["function"].get("name")}}
    raise BadRequest("`tool_choice` must be auto, none, required or a named function", param="tool_choice")


# -- answers ------------------------------------------------------------------------------------------

def normalised_usage(u: dict[str, Any]) -> Usage:
    """The gateway's :class:`Usage` of a Converse ``usage``: ``inputTokens`` excludes the cache reads and
    writes (the gateway's ``prompt_tokens`` includes them)."""
    read, write = token_count(u.get("cacheReadInputTokens")), token_count(u.get("cacheWriteInputTokens"))
    return Usage(prompt_tokens=token_count(u.get("inputTokens")) + read + write, completion_tokens=token_count(u.get("outputTokens")),
                 cache_read_tokens=read, cache_write_tokens=write)


def openai_usage(u: dict[str, Any]) -> dict[str, Any]:
    n = normalised_usage(u)
    return usage(n.prompt_tokens, n.completion_tokens, cached=n.cache_read_tokens, cache_write=n.cache_write_tokens)


def converse_to_openai(answer: dict[str, Any], model: str) -> dict[str, Any]:
    """A ``chat.completion`` for a Converse answer."""
    message = (answer.get("output") or {}).get("message") or {}
    texts, calls, thinking, thinking_blocks = [], [], [], []
    for block in message.get("content") or []:
        if not isinstance(block, dict):
            continue
        if "text" in block:
            texts.append(block["text"])
        elif "toolUse" in block:
            use = block["toolUse"] or {}
            calls.append({"id": use.get("toolUseId") or _call_id(), "name": use.get("name"),
                          "arguments": _encode(use.get("input") or {}).decode()})
        elif "reasoningContent" in block:
            reasoning = (block["reasoningContent"] or {}).get("reasoningText") or {}
            thinking.append(reasoning.get("text", ""))
            thinking_blocks.append({"type": "thinking", "thinking": reasoning.get("text", ""), "signature": reasoning.get("signature")})
    extra = {"reasoning_content": "".join(thinking), "thinking_blocks": thinking_blocks} if thinking_blocks else None
    return completion(
        id="chatcmpl-" + os.urandom(12).hex(), model=model,
        content="".join(texts) if texts or not calls else None,
        finish_reason=STOP_REASONS.get(answer.get("stopReason") or "end_turn", "stop"),
        tool_calls=calls, usage=openai_usage(answer.get("usage") or {}), extra_message=extra,
    )


def _call_id() -> str:
    return "call_" + os.urandom(12).hex()


def stream_exception(kind: str, message: str, provider: str) -> StreamInterrupted:
    """A ConverseStream exception event as the error that ends the client's stream."""
    return StreamInterrupted(
        f"provider `{provider}` reported an error mid-stream: {kind}: {message or 'no message'}",
        provider=provider, status=EXCEPTION_STATUS.get(kind, 502), code=kind,
    )


class StreamTranslator:
    """ConverseStream events in (``(event type, payload)``), OpenAI chunks out."""

    def __init__(self, provider: str, model: str, include_usage: bool) -> None:
        self.provider = provider
        self.include_usage = include_usage
        self.writer = ChunkWriter("chatcmpl-" + os.urandom(12).hex(), model, include_usage=include_usage)
        self.usage: dict[str, Any] | None = None
        # messageStop seen (the stop reason): the answer is complete, usage (metadata) may follow.
        self.finished = False
        self.done = False
        self._started = False
        self._tool_index: dict[int, int] = {}  # Converse content block index -> OpenAI tool-call index

    def feed(self, kind: str, event: dict[str, Any]) -> list[Chunk]:
        writer = self.writer
        if kind == "messageStart":
            self._started = True
            return [writer.role()]
        if not self._started:
            raise StreamInterrupted(f"provider `{self.provider}` sent {kind!r} before messageStart", provider=self.provider)
        if kind == "contentBlockStart":
            use = (event.get("start") or {}).get("toolUse")
            if isinstance(use, dict):
                self._tool_index[event.get("contentBlockIndex", 0)] = writer.tool_calls
                return [writer.tool_call(use.get("toolUseId") or _call_id(), use.get("name") or "")]
            return []
        if kind == "contentBlockDelta":
            delta = event.get("delta") or {}
            if "text" in delta:
                return [writer.text(delta["text"])] if delta["text"] else []
            if "toolUse" in delta:
                fragment = (delta["toolUse"] or {}).get("input", "")
                index = self._tool_index.get(event.get("contentBlockIndex", 0))
                return [writer.tool_arguments(fragment, index)] if fragment else []
            if "reasoningContent" in delta:
                text = (delta["reasoningContent"] or {}).get("text")
                return [writer.reasoning(text)] if text else []  # a signature delta carries no text
            return []
        if kind == "messageStop":
            self.finished = True
            return [writer.finish(STOP_REASONS.get(event.get("stopReason") or "end_turn", "stop"))]
        if kind == "metadata":
            self.usage = event.get("usage") or {}
            return self.close()
        return []  # contentBlockStop, unknown future events

    def close(self) -> list[Chunk]:
        """The end of the answer (the metadata event, or the body's end): the usage chunk if asked for."""
        if self.done:
            return []
        if not self.finished:
            raise StreamInterrupted(f"provider `{self.provider}` ended the stream before the answer was complete", provider=self.provider)
        self.done = True
        if self.include_usage and self.usage is not None:
            return [self.writer.usage_chunk(openai_usage(self.usage))]
        return []
