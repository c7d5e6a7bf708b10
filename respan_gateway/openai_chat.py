"""Building OpenAI chat answers: the one place a translating provider adapter gets the shapes from.

An adapter that speaks another API (Anthropic, Gemini, a third party's) returns what the OpenAI SDKs
expect (``wire-formats.md`` sections 1.4-1.5 and 7.3): :func:`completion` for a complete answer, and a
:class:`ChunkWriter` for a stream, which enforces the rules the SDK's ``.stream()`` helper depends on
(role only in the first delta, a tool call's id and name only in its first fragment, ``index`` on every
fragment, the usage chunk with ``choices: []`` last and only when ``include_usage`` was asked).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from .call import Call, Chunk
from .config import describe_validation_error
from .endpoints import TextPieces
from .errors import BadRequest

_encode = msgspec.json.Encoder().encode

FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})


class _Message(msgspec.Struct):
    role: str  # the one field every message has; the rest passes through unread


_decode_messages = msgspec.json.Decoder(list[_Message]).decode


def check_messages(raw: msgspec.Raw, *, allow_empty: bool = False) -> None:
    """A chat request's ``messages``: a non-empty array of objects, each with a string ``role``, else a
    400 naming the item. Only that shape is checked (cheaply: nothing else is read); the provider
    judges the rest. ``allow_empty``: ``[]`` passes (a stage may fill it: a managed prompt)."""
    try:
        messages = _decode_messages(raw)
    except msgspec.ValidationError as exc:
        text = describe_validation_error(exc, "messages").replace(".[", "[")
        raise BadRequest(text, param="messages") from None
    if not messages and not allow_empty:
        raise BadRequest("`messages` must not be empty", param="messages")


def check_not_empty(raw: msgspec.Raw | None) -> None:
    """The 400 of an empty ``messages`` (``[]``), checked before a chat request goes to a provider."""
    if raw is not None and len(raw) < 16 and bytes(raw).replace(b" ", b"").replace(b"\n", b"") == b"[]":
        raise BadRequest("`messages` must not be empty", param="messages")


def parse_data_url(url: str) -> tuple[str, str] | None:
    """``(media_type, base64 data)`` of a ``data:<mime>;base64,<data>`` URL, else None."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url[5:].partition(",")
    if not sep or not head.endswith(";base64"):
        return None
    return head[: -len(";base64")] or "application/octet-stream", data


def text_of(content: Any) -> str:
    """The text of an OpenAI message ``content``: a string, or the ``text`` parts joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") in ("text", None))
    return str(content)


def usage(prompt: int, completion: int, *, cached: int = 0, cache_write: int = 0, reasoning: int = 0) -> dict[str, Any]:
    """An OpenAI ``usage`` object. ``prompt`` includes cached and cache-write tokens, as OpenAI counts."""
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if cached or cache_write:
        out["prompt_tokens_details"] = {"cached_tokens": cached, "cache_write_tokens": cache_write}
    if reasoning:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return out


def include_usage(call: Call) -> bool:
    """Whether the client asked for the final usage chunk (``stream_options.include_usage``)."""
    options = call.get("stream_options")
    return bool(isinstance(options, dict) and options.get("include_usage"))


def completion(
    *,
    id: str,
    model: str,
    content: str | None,
    finish_reason: str,
    tool_calls: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
    created: int | None = None,
    extra_message: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``chat.completion`` object with one choice. ``tool_calls`` items: ``{id, name, arguments}``."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = [
            {"id": t["id"], "type": "function", "function": {"name": t["name"], "arguments": t["arguments"]}}
            for t in tool_calls
        ]
    if extra_message:
        message.update(extra_message)
    body: dict[str, Any] = {
        "id": id,
        "object": "chat.completion",
        "created": created if created is not None else int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


class ChunkWriter:
    """Makes the ``chat.completion.chunk`` events of one streamed answer (one choice).

    Call :meth:`role` once first (``text``/``tool_call``/``reasoning`` send it when it was not sent yet),
    then :meth:`text`, :meth:`reasoning`, :meth:`tool_call` (a new call) and :meth:`tool_arguments`
    (a fragment of the call of that index), then :meth:`finish`, then :meth:`usage_chunk` if
    :attr:`include_usage`.
    """

    __slots__ = ("id", "model", "created", "include_usage", "_role_sent", "tool_calls")

    def __init__(self, id: str, model: str, *, include_usage: bool = False, created: int | None = None) -> None:
        self.id = id
        self.model = model
        self.created = created if created is not None else int(time.time())
        self.include_usage = include_usage
        self._role_sent = False
        #: number of tool calls opened so far (the next call's ``index``)
        self.tool_calls = 0

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> Chunk:
        body: dict[str, Any] = {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self.include_usage:
            body["usage"] = None
        return Chunk(_encode(body))

    def _with_role(self, delta: dict[str, Any]) -> dict[str, Any]:
        if self._role_sent:
            return delta
        self._role_sent = True
        return {"role": "assistant", **delta}

    def role(self) -> Chunk:
        self._role_sent = True
        return self._chunk({"role": "assistant", "content": "", "refusal": None})

    def text(self, text: str) -> Chunk:
        return self._chunk(self._with_role({"content": text}))

    def reasoning(self, text: str) -> Chunk:
        """A reasoning (thinking) fragment, as ``delta.reasoning_content`` (LiteLLM's and DeepSeek's field)."""
        return self._chunk(self._with_role({"reasoning_content": text}))

    def tool_call(self, call_id: str, name: str, arguments: str = "") -> Chunk:
        """Opens a new tool call (index = running count) with its id and name, and maybe whole arguments."""
        index = self.tool_calls
        self.tool_calls += 1
        call = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        delta: dict[str, Any] = {"tool_calls": [call]}
        if not self._role_sent:
            delta = self._with_role({"content": None, **delta})
        return self._chunk(delta)

    def tool_arguments(self, fragment: str, index: int | None = None) -> Chunk:
        """A fragment of the arguments of tool call ``index`` (default: the last one opened)."""
        i = self.tool_calls - 1 if index is None else index
        return self._chunk({"tool_calls": [{"index": i, "function": {"arguments": fragment}}]})

    def finish(self, finish_reason: str) -> Chunk:
        return self._chunk({}, finish_reason)

    def usage_chunk(self, usage: dict[str, Any]) -> Chunk:
        return Chunk(_encode({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [], "usage": usage,
        }))


# Typed views of what the accumulator reads from chunks: decoding only these fields is cheap.
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
    refusal: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[_ToolCallDelta] | None = None


class _Logprobs(msgspec.Struct):
    content: list[Any] | None = None
    refusal: list[Any] | None = None


class _ChunkChoice(msgspec.Struct):
    index: int = 0
    delta: _Delta | None = None
    finish_reason: str | None = None
    logprobs: _Logprobs | None = None


class ChatChunk(msgspec.Struct):
    """A ``chat.completion.chunk`` as the gateway reads it (the fields the accumulator, the end of the
    stream and its usage need; the rest is skipped). The OpenAI adapter's chat stream decodes each
    chunk into one once (:func:`decode_chat_chunk`) and keeps it in :attr:`Chunk.parsed`."""

    id: str | None = None
    model: str | None = None
    created: int | None = None
    system_fingerprint: str | None = None
    service_tier: str | None = None
    choices: list[_ChunkChoice] | None = None
    usage: dict[str, Any] | None = None


#: ``bytes -> ChatChunk``; raises ``msgspec.DecodeError`` (not JSON) or ``msgspec.ValidationError``
#: (JSON of another shape: ``"choices": "x"``, a string ``index``...).
decode_chat_chunk = msgspec.json.Decoder(ChatChunk).decode


class _Choice:
    """One choice of a streamed answer, as it is assembled."""

    __slots__ = ("parts", "refusal", "reasoning", "tool_calls", "finish_reason", "logprobs")

    def __init__(self) -> None:
        self.parts = TextPieces()
        self.refusal = TextPieces()
        self.reasoning = TextPieces()
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.logprobs: dict[str, list[Any]] | None = None

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": str(self.parts) or None}
        if self.refusal:
            message["refusal"] = str(self.refusal)
        if self.reasoning:
            message["reasoning_content"] = str(self.reasoning)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return message


class ChatAccumulator:
    """Assembles a streamed chat answer into a ``chat.completion``: the chat endpoint's
    :class:`~respan_gateway.endpoints.Accumulator`. Every choice (``n > 1``), its content, refusal,
    reasoning, tool calls, log probabilities and finish reason, the usage and the answer's ids: the
    assembled answer is the one a non-streamed request would have had, so a response cache can store it."""

    __slots__ = ("id", "model", "created", "system_fingerprint", "service_tier", "choices", "usage")

    def __init__(self) -> None:
        self.id: str | None = None
        self.model: str | None = None
        self.created: int | None = None
        self.system_fingerprint: str | None = None
        self.service_tier: str | None = None
        self.choices: dict[int, _Choice] = {}
        self.usage: dict[str, Any] | None = None

    def feed(self, chunk: Chunk) -> None:
        data = chunk.parsed
        if not isinstance(data, ChatChunk):  # not decoded yet (a translation's or the mock's chunk)
            try:
                data = decode_chat_chunk(chunk.data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                return  # a chunk we cannot read is relayed all the same
        if self.id is None:
            self.id, self.model, self.created = data.id, data.model, data.created
        if data.system_fingerprint:
            self.system_fingerprint = data.system_fingerprint
        if data.service_tier:
            self.service_tier = data.service_tier
        if data.usage:
            self.usage = data.usage
        for choice in data.choices or ():
            slot = self.choices.get(choice.index)
            if slot is None:
                slot = self.choices[choice.index] = _Choice()
            if choice.finish_reason:
                slot.finish_reason = choice.finish_reason
            if choice.logprobs is not None:
                logprobs = slot.logprobs if slot.logprobs is not None else {}
                slot.logprobs = logprobs
                for name in ("content", "refusal"):
                    items = getattr(choice.logprobs, name)
                    if items:
                        logprobs.setdefault(name, []).extend(items)
            delta = choice.delta
            if delta is None:
                continue
            if delta.content:
                slot.parts.add(delta.content)
            if delta.refusal:
                slot.refusal.add(delta.refusal)
            if delta.reasoning_content:
                slot.reasoning.add(delta.reasoning_content)
            for fragment in delta.tool_calls or ():
                call = slot.tool_calls.setdefault(
                    fragment.index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                if fragment.id:
                    call["id"] = fragment.id
                if fragment.function is not None:
                    call["function"]["name"] += fragment.function.name or ""
                    call["function"]["arguments"] += fragment.function.arguments or ""

    def text(self) -> str:
        return "".join(str(self.choices[i].parts) for i in sorted(self.choices))

    def holds(self, chunk: Chunk) -> bool:
        return False  # an addition comes after the whole answer, as a chunk of its own

    def annex(self, name: str, value: Any, held: Chunk | None = None) -> list[Chunk]:
        """A chunk after the answer's that carries ``{name: value}`` (Respan's ``request_breakdown`` chunk:
        ``id`` the name, the value in ``choices[0]``), valid for the strict OpenAI SDKs: ``usage`` null,
        an empty delta (the role was in the first chunk), no second ``finish_reason``."""
        return [*([held] if held is not None else []), Chunk(_encode({
            "id": name, "object": "chat.completion.chunk", "created": self.created or int(time.time()),
            "model": "extra_parameter", "system_fingerprint": None, "usage": None,
            "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": None, name: value}],
        }))]

    def answer(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self.choices) or [0]:
            slot = self.choices.get(index) or _Choice()
            choice: dict[str, Any] = {"index": index, "message": slot.message(), "finish_reason": slot.finish_reason}
            if slot.logprobs is not None:
                choice["logprobs"] = {"content": slot.logprobs.get("content"), "refusal": slot.logprobs.get("refusal")}
            choices.append(choice)
        body: dict[str, Any] = {
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model, "choices": choices,
        }
        if self.system_fingerprint is not None:
            body["system_fingerprint"] = self.system_fingerprint
        if self.service_tier is not None:
            body["service_tier"] = self.service_tier
        if self.usage is not None:
            body["usage"] = self.usage
        return body





#: Finish reasons of an answer a response cache may store: a whole answer to the request as asked
#: (``length`` is what the request's own ``max_tokens`` gives again); not ``content_filter`` (a
#: moderation decision, not the model's answer) nor a missing one (the answer did not finish).
CACHEABLE_FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "function_call"})


def cacheable(answer: Any) -> bool:
    """Whether a complete ``chat.completion`` may be stored by a response cache: it has choices, and
    every one finished for a reason of :data:`CACHEABLE_FINISH_REASONS`."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    return bool(choices) and all(
        isinstance(c, dict) and c.get("finish_reason") in CACHEABLE_FINISH_REASONS for c in choices)


def replay(answer: dict[str, Any], call: Call) -> list[Chunk]:
    """The ``chat.completion.chunk`` events that stream ``answer`` (a ``chat.completion``) again, as a
    provider streams it: per choice a role chunk, its content (reasoning, refusal, tool calls, each
    whole in one delta), then its finish chunk; the usage chunk last when the request asks for it
    (``stream_options.include_usage``). What the SDKs' stream helpers assemble is ``answer`` again."""
    with_usage = include_usage(call)
    head: dict[str, Any] = {"id": answer.get("id"), "object": "chat.completion.chunk",
                            "created": answer.get("created") or int(time.time()), "model": answer.get("model")}
    for name in ("system_fingerprint", "service_tier"):
        if answer.get(name) is not None:
            head[name] = answer[name]

    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None, logprobs: Any = None) -> Chunk:
        body = {**head, "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]}
        if with_usage:
            body["usage"] = None
        return Chunk(_encode(body))

    chunks: list[Chunk] = []
    for position, choice in enumerate(answer.get("choices") or ()):
        index = choice.get("index", position)
        message = choice.get("message") or {}
        chunks.append(chunk(index, {"role": message.get("role", "assistant"), "content": "", "refusal": None}))
        if message.get("reasoning_content"):
            chunks.append(chunk(index, {"reasoning_content": message["reasoning_content"]}))
        logprobs = choice.get("logprobs")
        if message.get("content"):
            content_logprobs = {"content": logprobs.get("content"), "refusal": None} if isinstance(logprobs, dict) else None
            chunks.append(chunk(index, {"content": message["content"]}, logprobs=content_logprobs))
        if message.get("refusal"):
            refusal_logprobs = {"content": None, "refusal": logprobs.get("refusal")} if isinstance(logprobs, dict) else None
            chunks.append(chunk(index, {"refusal": message["refusal"]}, logprobs=refusal_logprobs))
        for position_call, tool_call in enumerate(message.get("tool_calls") or ()):
            function = tool_call.get("function") or {}
            chunks.append(chunk(index, {"tool_calls": [{
                "index": position_call, "id": tool_call.get("id"), "type": tool_call.get("type", "function"),
                "function": {"name": function.get("name"), "arguments": function.get("arguments", "")},
            }]}))
        chunks.append(chunk(index, {}, choice.get("finish_reason")))
    if with_usage and answer.get("usage") is not None:
        chunks.append(Chunk(_encode({**head, "choices": [], "usage": answer["usage"]})))
    return chunks


# -- time to first token and continuation of a broken stream (the chat endpoint's) ------------------
class _TokenDelta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[Any] | None = None
    function_call: Any = None
    refusal: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None


class _TokenChoice(msgspec.Struct):
    index: int = 0
    delta: _TokenDelta | None = None
    finish_reason: str | None = None


class _TokenChunk(msgspec.Struct):
    id: str | None = None
    created: int | None = None
    choices: list[_TokenChoice] | None = None
    usage: dict[str, Any] | None = None


_decode_token_chunk = msgspec.json.Decoder(_TokenChunk).decode


def _read(chunk: Chunk) -> _TokenChunk | None:
    try:
        return _decode_token_chunk(chunk.data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def chat_first_token(chunk: Chunk) -> bool:
    """Whether a ``chat.completion.chunk`` carries the answer's first token: text, a tool call, a
    refusal, reasoning, a finish reason or the usage (a role-only delta or Azure's prompt-filter
    chunk does not). A chunk that cannot be read counts (the relay judges it)."""
    data = _read(chunk)
    if data is None or data.usage:
        return True
    for choice in data.choices or ():
        if choice.finish_reason:
            return True
        d = choice.delta
        if d is not None and (d.content or d.tool_calls or d.function_call or d.refusal or d.reasoning_content or d.reasoning):
            return True
    return False


class ChatContinuation:
    """The chat endpoint's :class:`~respan_gateway.endpoints.StreamContinuation`: one choice, text only.

    While the first attempt streams it keeps the text delivered and notes what cannot be continued
    (a tool call, reasoning, a refusal, a finish, a second choice). A continuation's chunks are
    rewritten into the rest of the same answer: the first attempt's ``id`` and ``created``, no role,
    the whitespace the prefill left out not sent twice, chunks left empty dropped, and the usage
    chunk counting every attempt.
    """

    __slots__ = ("parts", "blocked", "id", "created", "continuing", "pending", "prior")

    def __init__(self, call: Call | None = None) -> None:
        self.parts = TextPieces()
        self.blocked = False
        self.id: str | None = None
        self.created: int | None = None
        self.continuing = False
        # Whitespace the client has that the prefill did not carry (providers refuse a trailing one).
        self.pending = ""
        self.prior: dict[str, int] | None = None

    def feed(self, chunk: Chunk) -> Chunk | None:
        data = _read(chunk)
        if data is None:
            self.blocked = True
            return chunk
        if self.id is None:
            self.id, self.created = data.id, data.created
        for choice in data.choices or ():
            d = choice.delta
            if choice.index != 0 or choice.finish_reason or (
                    d is not None and (d.tool_calls or d.function_call or d.refusal or d.reasoning_content or d.reasoning)):
                self.blocked = True
        if not self.continuing:
            for choice in data.choices or ():
                if choice.delta is not None and choice.delta.content:
                    self.parts.add(choice.delta.content)
            return chunk
        return self._rewrite(chunk)

    def _rewrite(self, chunk: Chunk) -> Chunk | None:
        body = msgspec.json.decode(chunk.data)
        if not isinstance(body, dict):
            return chunk
        if self.id is not None and "id" in body:
            body["id"] = self.id
        if self.created is not None and "created" in body:
            body["created"] = self.created
        said = False
        for choice in body.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict):
                delta.pop("role", None)
                text = delta.get("content")
                if isinstance(text, str) and text:
                    if self.pending:
                        # The prefill ended before this whitespace: the continuation may repeat it.
                        kept = len(text) - len(text.lstrip())
                        drop = min(kept, len(self.pending))
                        text, self.pending = text[drop:], "" if text[drop:] else self.pending[drop:]
                        delta["content"] = text
                    if text:
                        self.parts.add(text)
                said = said or bool(text) or any(v not in (None, "", []) for k, v in delta.items() if k != "content")
            said = said or bool(isinstance(choice, dict) and choice.get("finish_reason"))
        usage = body.get("usage")
        if isinstance(usage, dict) and self.prior:
            for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
                if isinstance(usage.get(key), int):
                    usage[key] += self.prior.get(key, 0)
        if not said and not usage:
            return None
        return Chunk(_encode(body), chunk.event)

    def resumable(self) -> bool:
        return not self.blocked

    def prefill(self) -> str:
        return str(self.parts)

    def request(self, call: Call, body: dict[str, msgspec.Raw]) -> None:
        text = self.prefill().rstrip()
        messages = msgspec.json.decode(body["messages"]) if "messages" in body else []
        if text:
            messages = [*messages, {"role": "assistant", "content": text}]
        call.body = {**body, "messages": msgspec.Raw(_encode(messages))}
        call.body_changed = True

    def resume(self, prior: Any = None) -> None:
        text = self.prefill()
        self.pending = text[len(text.rstrip()):]
        self.continuing = True
        if prior is not None:
            add = {"prompt_tokens": prior.prompt_tokens, "completion_tokens": prior.completion_tokens,
                   "total_tokens": prior.prompt_tokens + prior.completion_tokens}
            self.prior = {k: v + (self.prior or {}).get(k, 0) for k, v in add.items()}


__all__ = ["CACHEABLE_FINISH_REASONS", "ChatAccumulator", "ChatChunk", "decode_chat_chunk", "ChatContinuation", "chat_first_token", "ChunkWriter", "FINISH_REASONS", "cacheable", "replay", "check_messages", "completion", "include_usage", "parse_data_url", "text_of", "usage"]
