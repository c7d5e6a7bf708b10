"""The OpenAI Responses API served over chat completions, and back (``wire-formats.md`` section 2).

The one translation of the Responses API: the ``responses`` plugin declares it as its endpoint's
``via_chat`` (:class:`ResponsesTranslation`), so that every provider adapter that speaks chat (Anthropic,
Gemini, openai_compatible, mock, a third party's) serves ``/api/responses``:

- :func:`request_to_chat`: a Responses request as a chat-completions body; a field no chat provider
  can honour (a built-in tool, ``background``, ``conversation``...) is a ``BadRequest`` naming it;
- :func:`response_from_completion`: a ``chat.completion`` as a ``response`` object;
- :class:`StreamTranslator`: ``chat.completion.chunk`` events as the Responses event sequence, with
  ``sequence_number`` from 0 (``response.created`` ... ``response.completed``);
- :class:`ResponsesAccumulator`: a streamed answer (native or translated) assembled into the
  ``response`` object, for the observers;
- :func:`replay`: a complete ``response`` object as its full event sequence (a cached answer streamed);
- :func:`output_message`: a response's output as one readable chat-style message (log records).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from ..call import Call, Chunk, aclose
from ..endpoints import TextPieces
from ..errors import BadRequest, GatewayError
from ..params import coerce_metadata

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode

#: The request fields this translation maps (or knowingly drops: ``store``, ``previous_response_id``
#: and ``include`` are the gateway's business, ``stream_options`` only tunes OpenAI's own stream).
#: Any other field passes through to the chat body untouched (provider-specific extras).
MAPPED_FIELDS = frozenset({
    "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "text", "max_output_tokens",
    "temperature", "top_p", "reasoning", "metadata", "user", "stream", "stream_options", "store",
    "previous_response_id", "include", "truncation", "safety_identifier", "prompt_cache_key", "service_tier",
})
#: Fields a chat provider cannot honour when set (a 400 naming the field, never silently dropped).
REFUSED_FIELDS = {
    "background": "background mode needs a provider with OpenAI's Responses API",
    "conversation": "conversations are kept by OpenAI's Responses API: use `previous_response_id`",
    "max_tool_calls": "a provider served through chat completions cannot bound the number of tool calls",
    "top_logprobs": "log probabilities are not translated to chat completions",
    "context_management": "context management needs a provider with OpenAI's Responses API",
}
#: Input item types a chat conversation can carry (``reasoning`` items are skipped: the model's own
#: thinking, which no chat provider takes back).
CHAT_ITEM_TYPES = frozenset({"message", "function_call", "function_call_output", "reasoning"})
TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def new_id(prefix: str) -> str:
    """A fresh id as OpenAI makes them (``resp_``, ``msg_``, ``fc_``, ``rs_`` + 48 hex digits)."""
    return f"{prefix}_{secrets.token_hex(24)}"


# -- the request ---------------------------------------------------------------------------------------

def request_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat-completions body for a Responses request ``body`` (Respan params already out of it)."""
    for name, why in REFUSED_FIELDS.items():
        value = body.get(name)
        if value is not None and value is not False:
            raise BadRequest(f"`{name}` is not supported on this model: {why}", param=name)
    if body.get("truncation") not in (None, "disabled"):
        raise BadRequest("`truncation: auto` is not supported on this model: a provider served through chat "
                         "completions does not drop items from a conversation too long for it", param="truncation")
    out: dict[str, Any] = {k: v for k, v in body.items() if k not in MAPPED_FIELDS and k not in REFUSED_FIELDS}
    out["model"] = body.get("model")
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise BadRequest("`instructions` must be a string", param="instructions")
        messages.append({"role": "system", "content": instructions})
    messages += input_messages(body.get("input"))
    if not messages:
        raise BadRequest("the request has no `input`", param="input")
    out["messages"] = messages
    tools = body.get("tools")
    if tools:
        out["tools"] = _tools(tools)
    if "tool_choice" in body:
        choice = _tool_choice(body["tool_choice"])
        if choice is not None:
            out["tool_choice"] = choice
    if body.get("parallel_tool_calls") is not None:
        out["parallel_tool_calls"] = body["parallel_tool_calls"]
    fmt = _response_format(body.get("text"))
    if fmt is not None:
        out["response_format"] = fmt
    verbosity = (body.get("text") or {}).get("verbosity") if isinstance(body.get("text"), dict) else None
    if verbosity is not None:
        out["verbosity"] = verbosity
    for src, dst in (("max_output_tokens", "max_completion_tokens"), ("temperature", "temperature"), ("top_p", "top_p"),
                     ("user", "user"), ("safety_identifier", "safety_identifier"),
                     ("prompt_cache_key", "prompt_cache_key"), ("service_tier", "service_tier")):
        if body.get(src) is not None:
            out[dst] = body[src]
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        out["reasoning_effort"] = reasoning["effort"]
    elif reasoning is not None and not isinstance(reasoning, dict):
        raise BadRequest("`reasoning` must be an object", param="reasoning")
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def input_messages(value: Any) -> list[dict[str, Any]]:
    """Chat messages for a Responses ``input``: a string (one user message) or a list of items."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise BadRequest("`input` must be a string or an array of input items", param="input")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"`{where}` must be an object", param=where)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments") or ""}}
            if not isinstance(call["id"], str) or not isinstance(call["function"]["name"], str):
                raise BadRequest(f"`{where}`: a function_call needs `call_id` and `name`", param=where)
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)  # parallel calls: one assistant message
            elif last is not None and last["role"] == "assistant" and not last.get("tool_calls"):
                last["tool_calls"] = [call]  # the text the model wrote before its call
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            if not isinstance(output, str):
                output = _text(output, f"{where}.output") if isinstance(output, list) else _encode(output).decode()
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": output})
        elif kind == "reasoning":
            continue
        else:
            raise BadRequest(f"`{where}`: input items of type `{kind}` need a provider with OpenAI's Responses API",
                             param=f"{where}.type")
    return messages


def readable_messages(instructions: Any, value: Any) -> list[Any]:
    """A Responses request's prompt as chat messages (``instructions`` first): what logs and token
    estimates read. Lenient: an input it cannot translate is kept as the items it is."""
    head = [{"role": "system", "content": instructions}] if isinstance(instructions, str) else []
    try:
        return [*head, *input_messages(value)]
    except BadRequest:
        return [*head, *(value if isinstance(value, list) else [value])]


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise BadRequest(f"`{where}.role` must be user, assistant, system or developer", param=f"{where}.role")
    content = item.get("content")
    if role == "developer":
        role = "system"  # every chat provider knows `system`; not all know `developer`
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise BadRequest(f"`{where}.content` must be a string or an array of content parts", param=f"{where}.content")
    if role != "user":  # assistant and system content: text only
        return {"role": role, "content": _text(content, f"{where}.content")}
    parts = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": part.get("text", "")})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise BadRequest(f"`{at}`: an image by `file_id` needs a provider with OpenAI's Responses API; "
                                 "send `image_url` (a URL or a data: URL)", param=f"{at}.file_id")
            image: dict[str, Any] = {"url": url}
            if part.get("detail") is not None:
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "input_file" and isinstance(part.get("file_data"), str):
            file: dict[str, Any] = {"file_data": part["file_data"]}
            if part.get("filename"):
                file["filename"] = part["filename"]
            parts.append({"type": "file", "file": file})
        else:
            raise BadRequest(f"`{at}`: content of type `{kind}` is not supported on this model", param=f"{at}.type")
    return {"role": role, "content": parts}


def _text(parts: list[Any], where: str) -> str:
    texts = []
    for j, part in enumerate(parts):
        if isinstance(part, dict) and part.get("type") in ("input_text", "output_text", "text"):
            texts.append(str(part.get("text", "")))
        elif isinstance(part, dict) and part.get("type") == "refusal":
            texts.append(str(part.get("refusal", "")))
        else:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise BadRequest(f"`{where}[{j}]`: content of type `{kind}` is only taken in a user message", param=f"{where}[{j}]")
    return "".join(texts)


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise BadRequest("`tools` must be an array", param="tools")
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise BadRequest(f"`tools[{i}]`: the tool type `{kind}` needs a provider with OpenAI's Responses API "
                             "(only `function` tools are translated)", param=f"tools[{i}].type")
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> Any:
    if choice is None or choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    kind = choice.get("type") if isinstance(choice, dict) else choice
    raise BadRequest(f"`tool_choice` `{kind}` is not supported on this model (none, auto, required or a function)",
                     param="tool_choice")


def _response_format(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise BadRequest(f"`text.format.type` `{kind}` is not supported (text, json_object or json_schema)", param="text.format")


# -- the answer ----------------------------------------------------------------------------------------

def response_object(body: dict[str, Any], *, id: str, model: str | None, created_at: int, status: str,
                    output: list[dict[str, Any]], usage: dict[str, Any] | None, metadata: dict[str, Any] | None = None,
                    error: dict[str, Any] | None = None, incomplete_details: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``response`` object, echoing what the request ``body`` asked for (wire-formats 2.2)."""
    reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
    return {
        "id": id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": error,
        "incomplete_details": incomplete_details,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True) is not False,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": body.get("store", True) is not False,
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation") or "disabled",
        "usage": usage,
        "user": body.get("user"),
        "metadata": metadata if metadata is not None else (body.get("metadata") or {}),
    }


def usage_from_chat(usage: Any) -> dict[str, Any] | None:
    """A Responses ``usage`` for a chat ``usage`` (both detail objects always there: the 3.x SDK needs them)."""
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details") or {}
    out_details = usage.get("completion_tokens_details") or {}
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": int(details.get("cached_tokens") or 0),
                                 "cache_write_tokens": int(details.get("cache_write_tokens") or 0)},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": int(out_details.get("reasoning_tokens") or 0)},
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }


def _status(finish_reason: str | None) -> tuple[str, dict[str, Any] | None]:
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def message_item(text: str, *, id: str | None = None, refusal: str | None = None, status: str = "completed") -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if text or not refusal:
        content.append({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
    if refusal:
        content.append({"type": "refusal", "refusal": refusal})
    return {"id": id or new_id("msg"), "type": "message", "status": status, "role": "assistant", "content": content}


def function_call_item(call_id: str, name: str, arguments: str, *, id: str | None = None, status: str = "completed") -> dict[str, Any]:
    return {"id": id or new_id("fc"), "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}


def reasoning_item(text: str, *, id: str | None = None) -> dict[str, Any]:
    return {"id": id or new_id("rs"), "type": "reasoning", "summary": [],
            "content": [{"type": "reasoning_text", "text": text}]}


def response_from_completion(completion: dict[str, Any], body: dict[str, Any], *, id: str | None = None,
                             metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``response`` object for a ``chat.completion`` answering the Responses request ``body``."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    thinking = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(thinking, str) and thinking:
        output.append(reasoning_item(thinking))
    text = message.get("content")
    if isinstance(text, list):
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    refusal = message.get("refusal")
    if text or refusal:
        output.append(message_item(text or "", refusal=refusal if isinstance(refusal, str) else None))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        output.append(function_call_item(str(call.get("id") or new_id("call")), str(function.get("name") or ""),
                                         str(function.get("arguments") or "")))
    if not output:
        output.append(message_item(""))
    status, incomplete = _status(choice.get("finish_reason"))
    return response_object(body, id=id or new_id("resp"), model=completion.get("model") or body.get("model"),
                           created_at=int(completion.get("created") or time.time()), status=status, output=output,
                           usage=usage_from_chat(completion.get("usage")), metadata=metadata,
                           incomplete_details=incomplete)


# -- streams -------------------------------------------------------------------------------------------

class EventWriter:
    """Numbers the events of one Responses stream (``sequence_number`` from 0) and frames them (named)."""

    __slots__ = ("sequence",)

    def __init__(self, start: int = 0) -> None:
        self.sequence = start

    def event(self, kind: str, **fields: Any) -> Chunk:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return Chunk(_encode(payload), kind)


class _Item:
    __slots__ = ("index", "item", "text", "open")

    def __init__(self, index: int, item: dict[str, Any]) -> None:
        self.index, self.item, self.text, self.open = index, item, "", True


class StreamTranslator:
    """Turns the chunks of one streamed ``chat.completion`` into the Responses event sequence.

    :meth:`start` gives ``response.created`` and ``response.in_progress``; :meth:`feed` the events of
    one chat chunk; :meth:`finish` closes the open items and gives ``response.completed`` (or
    ``response.incomplete`` on a length or content-filter stop); :meth:`failed` gives
    ``response.failed`` for a stream that broke off.
    """

    def __init__(self, body: dict[str, Any], *, id: str | None = None, model: str | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        self.body = body
        self.id = id or new_id("resp")
        self.model = model or body.get("model")
        self.metadata = metadata
        self.created_at = int(time.time())
        self.writer = EventWriter()
        self.items: list[_Item] = []
        self.current: _Item | None = None  # the open message or reasoning item
        self.calls: dict[int, _Item] = {}  # chat tool-call index -> its function_call item
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def _response(self, status: str, **extra: Any) -> dict[str, Any]:
        output = [i.item for i in self.items if not i.open] if status != "in_progress" else []
        return response_object(self.body, id=self.id, model=self.model, created_at=self.created_at, status=status,
                               output=output, usage=usage_from_chat(self.usage) if status != "in_progress" else None,
                               metadata=self.metadata, **extra)

    def start(self) -> list[Chunk]:
        head = self._response("in_progress")
        return [self.writer.event("response.created", response=head),
                self.writer.event("response.in_progress", response=head)]

    def feed(self, chunk: dict[str, Any]) -> list[Chunk]:
        out: list[Chunk] = []
        if self.model is None or chunk.get("model"):
            self.model = chunk.get("model") or self.model
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            thinking = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(thinking, str) and thinking:
                out += self._text("reasoning", thinking)
            if isinstance(delta.get("content"), str) and delta["content"]:
                out += self._text("message", delta["content"])
            if isinstance(delta.get("refusal"), str) and delta["refusal"]:
                out += self._text("message", delta["refusal"])
            for fragment in delta.get("tool_calls") or ():
                out += self._tool_call(fragment)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def _open(self, item: dict[str, Any]) -> tuple[_Item, list[Chunk]]:
        out = self._close_current()
        slot = _Item(len(self.items), item)
        self.items.append(slot)
        out.append(self.writer.event("response.output_item.added", output_index=slot.index, item={**item}))
        return slot, out

    def _open_text(self, kind: str) -> tuple[_Item, list[Chunk]]:
        if kind == "message":
            item = {"id": new_id("msg"), "type": "message", "status": "in_progress", "role": "assistant", "content": []}
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        else:
            item = {"id": new_id("rs"), "type": "reasoning", "summary": [], "content": []}
            part = {"type": "reasoning_text", "text": ""}
        slot, out = self._open(item)
        self.current = slot
        out.append(self.writer.event("response.content_part.added", item_id=item["id"], output_index=slot.index,
                                     content_index=0, part=part))
        return slot, out

    def _text(self, kind: str, text: str) -> list[Chunk]:
        out: list[Chunk] = []
        slot = self.current
        if slot is None or slot.item["type"] != kind:
            slot, out = self._open_text(kind)
        slot.text += text
        fields: dict[str, Any] = {"item_id": slot.item["id"], "output_index": slot.index, "content_index": 0, "delta": text}
        if kind == "message":
            out.append(self.writer.event("response.output_text.delta", **fields, logprobs=[]))
        else:
            out.append(self.writer.event("response.reasoning_text.delta", **fields))
        return out

    def _tool_call(self, fragment: Any) -> list[Chunk]:
        if not isinstance(fragment, dict):
            return []
        out: list[Chunk] = []
        index = fragment.get("index", 0)
        function = fragment.get("function") or {}
        slot = self.calls.get(index)
        if slot is None:
            item = function_call_item(str(fragment.get("id") or new_id("call")), str(function.get("name") or ""), "",
                                      status="in_progress")
            slot, out = self._open(item)
            self.current = None
            self.calls[index] = slot
        elif function.get("name") and not slot.item["name"]:
            slot.item["name"] = function["name"]
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            slot.text += arguments
            out.append(self.writer.event("response.function_call_arguments.delta", item_id=slot.item["id"],
                                         output_index=slot.index, delta=arguments))
        return out

    def _close_current(self) -> list[Chunk]:
        slot, self.current = self.current, None
        return self._close(slot) if slot is not None else []

    def _close(self, slot: _Item) -> list[Chunk]:
        if not slot.open:
            return []
        slot.open = False
        item, ev = slot.item, self.writer.event
        ids = {"item_id": item["id"], "output_index": slot.index}
        if item["type"] == "message":
            part = {"type": "output_text", "text": slot.text, "annotations": [], "logprobs": []}
            item.update(status="completed", content=[part])
            out = [ev("response.output_text.done", **ids, content_index=0, text=slot.text, logprobs=[]),
                   ev("response.content_part.done", **ids, content_index=0, part=part)]
        elif item["type"] == "reasoning":
            part = {"type": "reasoning_text", "text": slot.text}
            item["content"] = [part]
            out = [ev("response.reasoning_text.done", **ids, content_index=0, text=slot.text),
                   ev("response.content_part.done", **ids, content_index=0, part=part)]
        else:
            item.update(status="completed", arguments=slot.text)
            out = [ev("response.function_call_arguments.done", **ids, name=item["name"], arguments=slot.text)]
        out.append(ev("response.output_item.done", output_index=slot.index, item=item))
        return out

    def finish(self) -> list[Chunk]:
        out: list[Chunk] = []
        if not self.items:  # an empty answer is still one (empty) message, as in a complete answer
            out += self._open_text("message")[1]
        for slot in self.items:
            out += self._close(slot)
        self.current = None
        status, incomplete = _status(self.finish_reason)
        response = self._response(status, incomplete_details=incomplete)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        out.append(self.writer.event(kind, response=response))
        return out

    def failed(self, exc: GatewayError) -> Chunk:
        return failed_event(self.writer, self._response("failed", error=error_of(exc)))


def error_of(exc: GatewayError) -> dict[str, Any]:
    """A response's ``error`` for a gateway error: its ``code`` one of OpenAI's (``ResponseErrorCode``, which
    the SDKs check), ``rate_limit_exceeded`` for a 429, else ``server_error``; the gateway's own code is
    in the ``error`` event that follows."""
    return {"code": "rate_limit_exceeded" if exc.status == 429 else "server_error", "message": exc.message}


def failed_event(writer: EventWriter, response: dict[str, Any]) -> Chunk:
    return writer.event("response.failed", response={**response, "status": "failed", "completed_at": None})


def error_event(exc: GatewayError, sequence_number: int) -> Chunk:
    """The ``error`` event that ends a Responses stream after a failure (wire-formats 2.3)."""
    payload = {"type": "error", "sequence_number": sequence_number, "code": exc.code or exc.type,
               "message": exc.message, "param": exc.param}
    return Chunk(_encode(payload), "error")


def replay(response: dict[str, Any], call: Call | None = None) -> list[Chunk]:
    """The full event sequence of a complete ``response`` object: what a client that streams gets for an
    answer the gateway already has whole (a cache hit). ``call`` is unused (the response says it all)."""
    writer = EventWriter()
    head = {**response, "status": "in_progress", "output": [], "usage": None, "completed_at": None,
            "incomplete_details": None, "error": None}
    out = [writer.event("response.created", response=head), writer.event("response.in_progress", response=head)]
    for index, item in enumerate(response.get("output") or ()):
        kind = item.get("type")
        ids = {"item_id": item.get("id"), "output_index": index}
        if kind == "message":
            out.append(writer.event("response.output_item.added", output_index=index,
                                    item={**item, "status": "in_progress", "content": []}))
            for c, part in enumerate(item.get("content") or ()):
                if part.get("type") == "output_text":
                    empty = {**part, "text": ""}
                    out.append(writer.event("response.content_part.added", **ids, content_index=c, part=empty))
                    out.append(writer.event("response.output_text.delta", **ids, content_index=c, delta=part.get("text", ""),
                                            logprobs=[]))
                    out.append(writer.event("response.output_text.done", **ids, content_index=c, text=part.get("text", ""),
                                            logprobs=[]))
                else:
                    out.append(writer.event("response.content_part.added", **ids, content_index=c, part=part))
                out.append(writer.event("response.content_part.done", **ids, content_index=c, part=part))
        elif kind == "function_call":
            out.append(writer.event("response.output_item.added", output_index=index,
                                    item={**item, "status": "in_progress", "arguments": ""}))
            out.append(writer.event("response.function_call_arguments.delta", **ids, delta=item.get("arguments", "")))
            out.append(writer.event("response.function_call_arguments.done", **ids, name=item.get("name"),
                                    arguments=item.get("arguments", "")))
        else:
            out.append(writer.event("response.output_item.added", output_index=index, item=item))
        out.append(writer.event("response.output_item.done", output_index=index, item=item))
    status = response.get("status")
    kind = {"incomplete": "response.incomplete", "failed": "response.failed"}.get(status or "", "response.completed")
    out.append(writer.event(kind, response=response))
    return out


class ResponsesTranslation:
    """The Responses endpoint's :class:`~respan_gateway.endpoints.ChatTranslation`."""

    def request(self, call: Call) -> dict[str, Any]:
        return request_to_chat({k: _decode(v) for k, v in call.body.items()})

    def answer(self, completion: dict[str, Any], call: Call) -> dict[str, Any]:
        return response_from_completion(completion, _echoed(call), metadata=_metadata(call))

    async def stream(self, chunks: AsyncIterator[Chunk], call: Call) -> AsyncIterator[Chunk]:
        translator = StreamTranslator(_echoed(call), model=None, metadata=_metadata(call))
        started = False
        try:
            async for chunk in chunks:
                data = chunk.json()
                if not started:  # after the first upstream chunk: a stream that fails before it can still fall back
                    started = True
                    translator.model = (data.get("model") if isinstance(data, dict) else None) or translator.model
                    for event in translator.start():
                        yield event
                for event in translator.feed(data if isinstance(data, dict) else {}):
                    yield event
            if not started:
                for event in translator.start():
                    yield event
            for event in translator.finish():
                yield event
        except GatewayError as exc:
            if started:
                yield translator.failed(exc)
            raise
        finally:
            await aclose(chunks)


_ECHOED = ("model", "instructions", "max_output_tokens", "parallel_tool_calls", "previous_response_id", "reasoning",
           "store", "temperature", "text", "tool_choice", "tools", "top_p", "truncation", "user")


def _echoed(call: Call) -> dict[str, Any]:
    """The request fields a response object echoes (the input, often the largest, is not decoded)."""
    return {k: call.get(k) for k in _ECHOED if k in call.body}


def _metadata(call: Call) -> dict[str, Any]:
    return coerce_metadata(call.params.metadata) or {}


# -- assembling a stream, and reading answers -------------------------------------------------------------

class _Event(msgspec.Struct):
    type: str = ""
    sequence_number: int | None = None
    response: dict[str, Any] | None = None
    output_index: int | None = None
    item: dict[str, Any] | None = None
    delta: str | None = None


_decode_event = msgspec.json.Decoder(_Event).decode


class ResponsesAccumulator:
    """Assembles a Responses stream (native or translated) into its ``response`` object: the one of the
    terminal event, else the last lifecycle event's with the items done so far (a cut stream)."""

    __slots__ = ("response", "items", "parts", "sequence", "terminal")

    def __init__(self) -> None:
        self.response: dict[str, Any] | None = None
        self.items: dict[int, dict[str, Any]] = {}
        self.parts = TextPieces()
        self.sequence = -1  # the last sequence_number seen
        self.terminal = False

    def feed(self, chunk: Chunk) -> None:
        try:
            event = _decode_event(chunk.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if event.sequence_number is not None:
            self.sequence = max(self.sequence, event.sequence_number)
        if event.response is not None and event.type.startswith("response."):
            self.response = event.response
            self.terminal = self.terminal or event.type in TERMINAL_EVENTS
        elif event.type == "response.output_item.done" and event.item is not None and event.output_index is not None:
            self.items[event.output_index] = event.item
        elif event.type == "response.output_text.delta" and event.delta:
            self.parts.add(event.delta)

    def text(self) -> str:
        return str(self.parts)

    def answer(self) -> dict[str, Any] | None:
        if self.response is None:
            return None
        if self.terminal:
            return self.response
        return {**self.response, "output": [self.items[i] for i in sorted(self.items)]}

    def holds(self, chunk: Chunk) -> bool:
        """The answer's last event (``response.completed`` / ``.incomplete``): an addition rides on it."""
        return chunk.event in ("response.completed", "response.incomplete")

    def annex(self, name: str, value: Any, held: Chunk | None = None) -> list[Chunk]:
        """The held terminal event with ``{name: value}`` as one more field (``request_breakdown``): the
        SDKs validate every event against the known types, so it cannot be an event of its own."""
        if held is None:
            return []
        event = _decode(held.data)
        return [Chunk(_encode({**event, name: value}), held.event)]


def output_message(output: Any) -> dict[str, Any]:
    """A response's ``output`` items as one chat-style assistant message (``content`` the text,
    ``tool_calls`` the function calls): the readable form of log records and ``request_breakdown``."""
    texts, calls, thinking = [], [], []
    for item in output if isinstance(output, list) else ():
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            for part in item.get("content") or ():
                if isinstance(part, dict):
                    texts.append(str(part.get("text") or part.get("refusal") or ""))
        elif item.get("type") == "function_call":
            calls.append({"id": item.get("call_id"), "type": "function",
                          "function": {"name": item.get("name"), "arguments": item.get("arguments")}})
        elif item.get("type") == "reasoning":
            thinking += [str(p.get("text", "")) for p in item.get("content") or item.get("summary") or () if isinstance(p, dict)]
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    return message


__all__ = [
    "CHAT_ITEM_TYPES", "EventWriter", "MAPPED_FIELDS", "REFUSED_FIELDS", "ResponsesAccumulator", "ResponsesTranslation",
    "StreamTranslator", "TERMINAL_EVENTS", "error_event", "error_of", "failed_event", "input_messages", "new_id",
    "output_message", "readable_messages", "replay", "request_to_chat", "response_from_completion", "response_object", "usage_from_chat",
]
