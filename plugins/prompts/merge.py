"""How a rendered prompt and the request combine, per endpoint (README.md, "Merge rules").

The prompt's messages are rendered in the chat shape; each endpoint kind has a :class:`Shape` that
says where messages and the system text go in its wire format (chat ``messages``; Anthropic
``messages`` + ``system``; Responses ``input`` + ``instructions``) and how the prompt's chat-named
params are called there. The merge itself is the same for every kind:

- schema 1, ``override: false`` (the default): the request wins each field it sets (its messages,
  when it sends any, replace the prompt's; its system text the prompt's);
- schema 1, ``override: true``: the prompt wins each field it sets; the request's messages are used
  only when the prompt has none;
- schema 1, ``override_params``: applied last, over both; its ``messages`` replace the result's
  (``override_config.messages_override_mode = "override"``, the default) or follow them (``"append"``);
- schema 2: the prompt wins each field it sets; its messages come first and the request's after (the
  system texts likewise); ``patch`` is applied last (never ``messages`` or ``input``: a 400).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from respan_gateway import BadRequest, Call, RespanParams
from respan_gateway.config import describe_validation_error
from respan_gateway.params import PARAM_NAMES, PromptParams

from .model import Invalid, Version, check_messages

_decode_keys = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_SYSTEM_ROLES = ("system", "developer")


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _split_system(messages: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    system = [_text_of(m.get("content")) for m in messages if m.get("role") in _SYSTEM_ROLES]
    rest = [m for m in messages if m.get("role") not in _SYSTEM_ROLES]
    text = "\n\n".join(s for s in system if s)
    return (text or None), rest


class Shape:
    """Where an endpoint kind keeps messages and system text, and its names for the prompt's params."""

    def __init__(self, messages: str, system: str | None, renames: dict[str, str],
                 convert: Callable[[dict[str, Any]], dict[str, Any]] | None) -> None:
        self.messages, self.system, self.renames, self.convert = messages, system, renames, convert

    def native(self, chat: list[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]]]:
        """Chat-shaped messages as (system text, items) of this wire format."""
        if self.system is None:
            return None, list(chat)
        system, rest = _split_system(chat)
        return system, [self.convert(m) for m in rest] if self.convert else rest

    def request(self, call: Call) -> tuple[Any, list[Any]]:
        items = call.get(self.messages)
        if isinstance(items, str):  # Responses: a string input is one user message
            items = [{"role": "user", "content": items}]
        return (call.get(self.system) if self.system else None), (items if isinstance(items, list) else [])

    def rename(self, params: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for name, value in params.items():
            new = self.renames.get(name, name)
            if new == "stop_sequences" and isinstance(value, str):
                value = [value]
            out[new] = value
        return out


def _anthropic_message(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    role = "assistant" if message.get("role") == "assistant" else "user"
    if not isinstance(content, list):
        return {"role": role, "content": content if content is not None else ""}
    blocks = []
    for part in content:
        if part.get("type") == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif part.get("type") == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            if url.startswith("data:") and ";base64," in url:
                media, _, data = url[5:].partition(";base64,")
                blocks.append({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}})
            else:
                blocks.append({"type": "image", "source": {"type": "url", "url": url}})
        else:
            blocks.append(part)
    return {"role": role, "content": blocks}


def _responses_item(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    role = message.get("role", "user")
    if not isinstance(content, list):
        return {"role": role, "content": content if content is not None else ""}
    text_type = "output_text" if role == "assistant" else "input_text"
    parts = []
    for part in content:
        if part.get("type") == "text":
            parts.append({"type": text_type, "text": part.get("text", "")})
        elif part.get("type") == "image_url":
            image = part.get("image_url") or {}
            parts.append({"type": "input_image", "image_url": image.get("url", ""), "detail": image.get("detail", "auto")})
        else:
            parts.append(part)
    return {"type": "message", "role": role, "content": parts}


#: The endpoint kinds a prompt applies to.
SHAPES: dict[str, Shape] = {
    "chat": Shape("messages", None, {}, None),
    "anthropic_messages": Shape("messages", "system", {"max_completion_tokens": "max_tokens", "stop": "stop_sequences"},
                                _anthropic_message),
    "responses": Shape("input", "instructions", {"max_tokens": "max_output_tokens", "max_completion_tokens": "max_output_tokens"},
                       _responses_item),
}


def _join_system(first: Any, second: Any) -> Any:
    if not first:
        return second or None
    if not second:
        return first
    if isinstance(first, str) and isinstance(second, str):
        return f"{first}\n\n{second}"
    blocks = lambda s: [{"type": "text", "text": s}] if isinstance(s, str) else list(s)  # noqa: E731
    return blocks(first) + blocks(second)


def sent_fields(call: Call) -> set[str]:
    """The body fields the client sent (the native Anthropic endpoint adds ``max_tokens`` before the
    pipeline when it is absent: that default is not the client's)."""
    if call.kind == "anthropic_messages":
        try:
            return set(_decode_keys(call.raw_body)) & set(call.body)
        except msgspec.DecodeError:
            pass
    return set(call.body)


def check_request(p: PromptParams) -> None:
    """What is wrong in the ``prompt`` param itself, before any lookup."""
    if p.schema_version == 2 and p.patch:
        for name in ("messages", "input"):
            if name in p.patch:
                raise BadRequest(f"`prompt.patch` may not hold `{name}`: with schema_version 2 the prompt's messages "
                                 "come first and the request's follow them", param=f"prompt.patch.{name}")


def apply(call: Call, p: PromptParams, version: Version, rendered: list[dict[str, Any]]) -> None:
    """Write the merged request into ``call`` (body, model, stream, params)."""
    shape = SHAPES[call.kind]
    sent = sent_fields(call)
    prompt_system, prompt_items = shape.native(rendered)
    req_system, req_items = shape.request(call)
    params = shape.rename(dict(version.info.params))
    respan = {k: params.pop(k) for k in list(params) if k in PARAM_NAMES}
    respan_over: dict[str, Any] = {}
    req_model = call.get("model") if "model" in sent else None
    v2 = p.schema_version == 2
    prompt_wins = v2 or p.override

    if v2:
        items, system = prompt_items + req_items, _join_system(prompt_system, req_system)
    elif p.override:
        items = prompt_items or req_items
        system = prompt_system or req_system
    else:
        items = req_items or prompt_items
        system = req_system or prompt_system
    model = (version.info.model or req_model) if prompt_wins else (req_model or version.info.model)
    fields = {k: v for k, v in params.items() if prompt_wins or k not in sent}

    overrides = (p.patch if v2 else p.override_params) or {}
    if overrides:
        overrides = dict(overrides)
        messages = None if v2 else overrides.pop("messages", None)
        if messages is not None:
            try:
                check_messages(messages, "prompt.override_params.messages")
            except Invalid as exc:
                raise BadRequest(str(exc), param=exc.key) from None
            o_system, o_items = shape.native(messages)
            mode = p.override_config.messages_override_mode if p.override_config else "override"
            if mode == "append":
                items, system = items + o_items, _join_system(system, o_system)
            else:
                items, system = o_items, o_system
        model = overrides.pop("model", model)
        for name, value in shape.rename(overrides).items():
            (respan_over if name in PARAM_NAMES else fields)[name] = value

    call.set(shape.messages, items)
    if shape.system is not None:
        if system:
            call.set(shape.system, system)
        elif shape.system in call.body:
            call.pop(shape.system)
    if model:
        call.set("model", model)
        call.model = model
    for name, value in fields.items():
        call.set(name, value)
    if "stream" not in sent and version.info.stream:
        call.set("stream", True)
        call.stream = True
    if respan or respan_over:
        _merge_params(call, respan, respan_over, prompt_wins)


def _merge_params(call: Call, from_prompt: dict[str, Any], overrides: dict[str, Any], prompt_wins: bool) -> None:
    """The prompt's Respan params (``fallback_models``, ``cache_enabled``...) into ``call.params``,
    with the same precedence as body fields."""
    current = msgspec.to_builtins(call.params)
    merged = {**current, **from_prompt} if prompt_wins else {**from_prompt, **current}
    merged.update(overrides)
    merged["prompt"] = current.get("prompt")
    try:
        call.params = msgspec.convert(merged, RespanParams)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"a Respan param of the prompt is invalid: {describe_validation_error(exc)}", param="prompt") from None
