"""OpenAI chat <-> Gemini generateContent: the one place that knows this mapping (wire-formats.md 5.6).

Public, in the core, so that every adapter that speaks Gemini's format (the ``gemini`` plugin, Gemini on
Vertex AI) shares it: a plugin never imports another plugin.
"""

from __future__ import annotations

import base64
import mimetypes
import struct
from typing import Any

import msgspec

from respan_gateway import BadRequest, Chunk, StreamInterrupted
from respan_gateway.cost import Usage, token_count
from respan_gateway.ids import hex_id
from respan_gateway.openai_chat import ChunkWriter, completion, parse_data_url, text_of, usage

_decode = msgspec.json.decode
_encode = msgspec.json.Encoder().encode

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "LANGUAGE": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
    "IMAGE_OTHER": "content_filter",
    "OTHER": "content_filter",
    "MALFORMED_FUNCTION_CALL": "stop",
    "UNEXPECTED_TOOL_CALL": "stop",
    "TOO_MANY_TOOL_CALLS": "stop",
    "FINISH_REASON_UNSPECIFIED": "stop",
}
_EFFORT_BUDGETS = {"none": 0, "minimal": 0, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 32768, "max": 32768}
# OpenAI fields mapped below; any other field passes through untouched (safetySettings, cachedContent...).
_MAPPED = frozenset({
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
    "stop", "n", "seed", "presence_penalty", "frequency_penalty", "response_format", "logprobs", "top_logprobs",
    "tools", "tool_choice", "parallel_tool_calls", "reasoning_effort", "user", "metadata", "store", "service_tier",
    "logit_bias", "prompt_cache_key", "safety_identifier", "verbosity", "modalities", "functions", "function_call",
})
_GENERATION = (("max_completion_tokens", "maxOutputTokens"), ("max_tokens", "maxOutputTokens"), ("temperature", "temperature"),
               ("top_p", "topP"), ("top_k", "topK"), ("n", "candidateCount"), ("seed", "seed"), ("presence_penalty", "presencePenalty"),
               ("frequency_penalty", "frequencyPenalty"), ("top_logprobs", "logprobs"))


def request_to_gemini(body: dict[str, Any]) -> dict[str, Any]:
    """The generateContent body for an OpenAI chat body (already free of Respan params)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("`messages` must be a non-empty list", param="messages")
    if body.get("functions") or body.get("function_call"):
        raise BadRequest("use `tools` and `tool_choice` (the legacy `functions` are not translated)", param="functions")
    if body.get("stream") and (body.get("n") or 1) > 1:
        raise BadRequest("streaming with `n` greater than 1 is not supported for Gemini models", param="n")
    system, contents = _contents(messages)
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    config: dict[str, Any] = {}
    for openai_key, gemini_key in _GENERATION:
        if body.get(openai_key) is not None and gemini_key not in config:
            config[gemini_key] = body[openai_key]
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("logprobs"):
        config["responseLogprobs"] = True
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = (fmt.get("json_schema") or {}).get("schema")
        if schema:
            config["responseJsonSchema"] = schema
    effort = body.get("reasoning_effort")
    if isinstance(effort, str) and effort in _EFFORT_BUDGETS:
        budget = _EFFORT_BUDGETS[effort]
        config["thinkingConfig"] = {"thinkingBudget": budget, "includeThoughts": budget > 0}
    tools = body.get("tools")
    if tools:
        out["tools"] = [{"functionDeclarations": [_declaration(t) for t in tools]}]
    choice = body.get("tool_choice")
    if choice is not None:
        out["toolConfig"] = {"functionCallingConfig": _calling_config(choice)}
    for key, value in body.items():
        if key in _MAPPED:
            continue
        if key in ("generationConfig", "generation_config") and isinstance(value, dict):
            config.update(value)  # the client's own Gemini settings win
        else:
            out[key] = value
    if config:
        out["generationConfig"] = config
    return out


def _contents(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call id -> function name (functionResponse needs the name)

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        if not parts:
            return
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"] += parts
        else:
            contents.append({"role": role, "parts": parts})

    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"`messages[{i}]` must be an object", param="messages")
        role, content = message.get("role"), message.get("content")
        if role in ("system", "developer"):
            text = text_of(content)
            if text:
                system.append({"text": text})
        elif role == "user":
            add("user", _user_parts(content, i))
        elif role == "assistant":
            parts: list[dict[str, Any]] = []
            text = text_of(content)
            if text:
                parts.append({"text": text})
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                try:
                    args = _decode(function.get("arguments") or "{}")
                except msgspec.DecodeError:
                    raise BadRequest(f"`messages[{i}].tool_calls`: `arguments` is not valid JSON", param="messages") from None
                names[call.get("id") or ""] = function.get("name") or ""
                part: dict[str, Any] = {"functionCall": {"name": function.get("name"), "args": args}}
                if call.get("thought_signature"):
                    part["thoughtSignature"] = call["thought_signature"]
                parts.append(part)
            add("model", parts)
        elif role == "tool":
            call_id = message.get("tool_call_id") or ""
            name = names.get(call_id)
            if name is None:
                raise BadRequest(f"`messages[{i}]`: no earlier assistant tool call has the id {call_id!r}", param="messages")
            text = text_of(content)
            try:
                response = _decode(text) if text else {}
            except msgspec.DecodeError:
                response = text
            if not isinstance(response, dict):
                response = {"content": response}
            add("user", [{"functionResponse": {"name": name, "response": response}}])
        else:
            raise BadRequest(f"`messages[{i}].role`: unknown role {role!r}", param="messages")
    return system, contents


def _user_parts(content: Any, i: int) -> list[dict[str, Any]]:
    if content is None or isinstance(content, str):
        return [{"text": content}] if content else []
    parts = []
    for part in content if isinstance(content, list) else []:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append({"text": part.get("text", "")})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url", "") if isinstance(image, dict) else str(image or "")
            data_url = parse_data_url(url)
            if data_url is not None:
                parts.append({"inlineData": {"mimeType": data_url[0], "data": data_url[1]}})
            elif url.startswith(("http://", "https://", "gs://")):
                mime = mimetypes.guess_type(url.split("?")[0])[0] or "image/jpeg"
                parts.append({"fileData": {"mimeType": mime, "fileUri": url}})
            else:
                raise BadRequest(f"`messages[{i}]`: an image_url must be an http(s) or base64 data URL", param="messages")
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            parts.append({"inlineData": {"mimeType": f"audio/{audio.get('format', 'wav')}", "data": audio.get("data", "")}})
        elif kind == "file":
            data_url = parse_data_url((part.get("file") or {}).get("file_data") or "")
            if data_url is None:
                raise BadRequest(f"`messages[{i}]`: a file part needs `file_data` as a base64 data URL", param="messages")
            parts.append({"inlineData": {"mimeType": data_url[0], "data": data_url[1]}})
        else:
            raise BadRequest(f"`messages[{i}].content`: part type {kind!r} is not supported by Gemini models", param="messages")
    return parts


def _declaration(tool: Any) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(tool.get("function"), dict):
        raise BadRequest("`tools`: only function tools can be sent to Gemini models", param="tools")
    function = tool["function"]
    out: dict[str, Any] = {"name": function.get("name")}
    if function.get("description"):
        out["description"] = function["description"]
    if function.get("parameters"):
        # Full JSON Schema (additionalProperties, $defs...), which `parameters` (an OpenAPI subset) rejects.
        out["parametersJsonSchema"] = function["parameters"]
    return out


def _calling_config(choice: Any) -> dict[str, Any]:
    if choice in ("auto", "none", "required"):
        return {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice]}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return {"mode": "ANY", "allowedFunctionNames": [choice["function"].get("name")]}
    raise BadRequest("`tool_choice` must be auto, none, required or a named function", param="tool_choice")


def normalised_usage(meta: dict[str, Any]) -> Usage:
    """The gateway's :class:`Usage` of a ``usageMetadata`` object: ``promptTokenCount`` includes the cached
    content; the thoughts count as completion tokens (as OpenAI counts reasoning)."""
    thoughts = token_count(meta.get("thoughtsTokenCount"))
    return Usage(prompt_tokens=token_count(meta.get("promptTokenCount")),
                 completion_tokens=token_count(meta.get("candidatesTokenCount")) + thoughts,
                 cache_read_tokens=token_count(meta.get("cachedContentTokenCount")), reasoning_tokens=thoughts)


def openai_usage(meta: dict[str, Any]) -> dict[str, Any]:
    thoughts = meta.get("thoughtsTokenCount") or 0
    completion_tokens = (meta.get("candidatesTokenCount") or 0) + thoughts
    return usage(meta.get("promptTokenCount") or 0, completion_tokens, cached=meta.get("cachedContentTokenCount") or 0, reasoning=thoughts)


def _call_id(call: dict[str, Any]) -> str:
    return call.get("id") or "call_" + hex_id(12)


def response_to_openai(response: dict[str, Any], model: str) -> dict[str, Any]:
    """A ``chat.completion`` for a GenerateContentResponse (several candidates = several choices)."""
    usage_ = openai_usage(response.get("usageMetadata") or {})
    candidates = response.get("candidates") or []
    choices = []
    for position, candidate in enumerate(candidates):
        texts, thoughts, calls = [], [], []
        for part in (candidate.get("content") or {}).get("parts") or []:
            if "functionCall" in part:
                call = part["functionCall"]
                entry = {"id": _call_id(call), "name": call.get("name"), "arguments": _encode(call.get("args") or {}).decode()}
                calls.append((entry, part.get("thoughtSignature")))
            elif part.get("thought"):
                thoughts.append(part.get("text", ""))
            elif "text" in part:
                texts.append(part["text"])
        reason = FINISH_REASONS.get(candidate.get("finishReason") or "STOP", "stop")
        if calls and reason == "stop":
            reason = "tool_calls"
        extra = {"reasoning_content": "".join(thoughts)} if thoughts else None
        body = completion(id="", model=model, content="".join(texts) if texts or not calls else None,
                          finish_reason=reason, tool_calls=[c for c, _ in calls], extra_message=extra)
        choice = body["choices"][0]
        for tool_call, (_, signature) in zip(choice["message"].get("tool_calls", []), calls):
            if signature:
                tool_call["thought_signature"] = signature  # to send back on the next turn
        choice["index"] = candidate.get("index", position)
        choices.append(choice)
    if not candidates:  # the prompt itself was blocked (promptFeedback.blockReason)
        body = completion(id="", model=model, content=None, finish_reason="content_filter")
        choices = body["choices"]
    out = completion(id="chatcmpl-" + (response.get("responseId") or hex_id(8)),
                     model=response.get("modelVersion") or model, content=None, finish_reason="stop", usage=usage_)
    out["choices"] = choices
    return out


def stream_error(error: Any, provider: str) -> StreamInterrupted:
    error = error if isinstance(error, dict) else {"message": str(error)}
    status = error.get("code") if isinstance(error.get("code"), int) else 502
    return StreamInterrupted(
        f"provider `{provider}` reported an error mid-stream: {error.get('message') or 'unknown error'}",
        provider=provider, status=status, code=error.get("status") if isinstance(error.get("status"), str) else "stream_interrupted",
    )


class StreamTranslator:
    """Gemini stream chunks (full response objects with incremental parts) in, OpenAI chunks out."""

    def __init__(self, provider: str, model: str, include_usage: bool) -> None:
        self.provider = provider
        self.model = model
        self.include_usage = include_usage
        self.writer: ChunkWriter | None = None
        self.usage: dict[str, Any] = {}
        self.finished = False
        self._calls = False

    def feed(self, data: dict[str, Any]) -> list[Chunk]:
        if "error" in data:
            raise stream_error(data["error"], self.provider)
        out: list[Chunk] = []
        if self.writer is None:
            self.writer = ChunkWriter("chatcmpl-" + (data.get("responseId") or hex_id(8)),
                                      data.get("modelVersion") or self.model, include_usage=self.include_usage)
            out.append(self.writer.role())
        writer = self.writer
        if data.get("usageMetadata"):
            self.usage = data["usageMetadata"]
        candidates = data.get("candidates") or []
        if not candidates and (data.get("promptFeedback") or {}).get("blockReason"):
            self.finished = True
            out.append(writer.finish("content_filter"))
            return out
        for candidate in candidates[:1]:
            for part in (candidate.get("content") or {}).get("parts") or []:
                if "functionCall" in part:
                    call = part["functionCall"]
                    self._calls = True
                    out.append(writer.tool_call(_call_id(call), call.get("name") or "", _encode(call.get("args") or {}).decode()))
                elif part.get("thought"):
                    out.append(writer.reasoning(part.get("text", "")))
                elif part.get("text"):
                    out.append(writer.text(part["text"]))
            if candidate.get("finishReason"):
                reason = FINISH_REASONS.get(candidate["finishReason"], "stop")
                self.finished = True
                out.append(writer.finish("tool_calls" if self._calls and reason == "stop" else reason))
        return out

    def close(self) -> list[Chunk]:
        """At the end of the upstream body: the usage chunk, or an error if the answer never finished."""
        if not self.finished or self.writer is None:
            raise StreamInterrupted(f"provider `{self.provider}` ended the stream before the answer was complete", provider=self.provider)
        return [self.writer.usage_chunk(openai_usage(self.usage))] if self.include_usage else []


def embeddings_request(body: dict[str, Any], upstream_model: str) -> dict[str, Any]:
    raw = body.get("input")
    items = raw if isinstance(raw, list) else [raw]
    if not items or not all(isinstance(item, str) and item for item in items):
        raise BadRequest("`input` must be a non-empty string or list of strings for Gemini models (no token ids)", param="input")
    extra = {"outputDimensionality": body["dimensions"]} if body.get("dimensions") else {}
    name = upstream_model if upstream_model.startswith("models/") else f"models/{upstream_model}"
    return {"requests": [{"model": name, "content": {"parts": [{"text": item}]}, **extra} for item in items]}


def embeddings_to_openai(response: dict[str, Any], model: str, encoding_format: str | None) -> dict[str, Any]:
    data = []
    for index, item in enumerate(response.get("embeddings") or []):
        values = item.get("values") or []
        vector: Any = values
        if encoding_format == "base64":
            vector = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
    meta = response.get("usageMetadata") or {}
    tokens = meta.get("promptTokenCount") or 0
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
