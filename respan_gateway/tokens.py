"""Offline token estimates: for streams that arrive without usage, and per-part token breakdowns.

The tokenizer is OpenAI's ``o200k_base`` BPE from the ``bpe-openai`` package, whose wheel ships the
BPE data (``tiktoken`` downloads its files at run time, which a gateway without internet cannot do).
It is an *estimate* for other providers' models. It is loaded on first need, in a thread (~0.1-1 s,
and ~120 MB of memory a worker never pays when every provider reports usage); until it is loaded (or if
the package is missing) a characters/4 heuristic answers, so no request ever waits for it.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import msgspec

from .cost import Usage

#: The BPE encoding used; :func:`use` changes it ("heuristic" = never load a tokenizer).
ENCODING = "o200k_base"
# Per-message framing tokens of the chat format (role, separators), as OpenAI's cookbook counts them.
TOKENS_PER_MESSAGE = 3

_tokenizer: Any = None
_lock = threading.Lock()
_loading: threading.Thread | None = None
_encode = msgspec.json.Encoder().encode


def use(encoding: str) -> None:
    """Choose the encoding before first use: "o200k_base", "cl100k_base" (about half the memory), or
    "heuristic" (characters/4, no tokenizer in memory at all)."""
    global ENCODING, _tokenizer, _loading
    with _lock:
        if encoding == ENCODING and _tokenizer is not False:
            return
        ENCODING = encoding
        # The process's last choice wins (one gateway per process outside of tests).
        _tokenizer = False if encoding == "heuristic" else None
        _loading = None


def _load() -> Any:
    global _tokenizer
    with _lock:
        if _tokenizer is None:
            try:
                with warnings.catch_warnings():  # bpe-openai 0.1.4 uses a deprecated importlib.resources call
                    warnings.simplefilter("ignore", DeprecationWarning)
                    from bpe_openai import _bindings  # the Rust tokenizer; count() builds no token list

                    _tokenizer = _bindings.tokenizer_for_encoding(ENCODING)
            except Exception:  # package missing or broken: the heuristic stays
                _tokenizer = False
    return _tokenizer


def preload() -> threading.Thread:
    """Start loading the tokenizer in a daemon thread (once); the thread is returned to join on."""
    global _loading
    with _lock:
        if _loading is None:
            _loading = threading.Thread(target=_load, name="tokenizer-load", daemon=True)
            _loading.start()
        return _loading


def method() -> str:
    """What :func:`count` uses right now: the encoding name, or ``"heuristic"``."""
    return ENCODING if _tokenizer else "heuristic"


def count(text: str) -> int:
    """Tokens in ``text`` (BPE when loaded, else about one token per 4 characters)."""
    if not text:
        return 0
    tokenizer = _tokenizer
    if tokenizer:
        return int(tokenizer.count(text))
    if tokenizer is None and _loading is None:  # False = heuristic chosen, or the package is missing
        preload()
    return max(1, (len(text) + 3) // 4)


def text_of(content: Any) -> str:
    """The text of a message ``content``: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def count_message(message: Any) -> int:
    if not isinstance(message, dict):
        return 0
    total = TOKENS_PER_MESSAGE + count(text_of(message.get("content")))
    for field in ("arguments", "output"):  # Responses items: a function call and its output
        if isinstance(message.get(field), str):
            total += count(message[field])
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            total += count(str(function.get("name") or "")) + count(str(function.get("arguments") or ""))
    return total


def count_messages(messages: Any) -> int:
    """Prompt tokens of a chat ``messages`` list (plus the 3 tokens that prime the answer)."""
    if not isinstance(messages, list) or not messages:
        return 0
    return sum(count_message(m) for m in messages) + 3


def count_json(value: Any) -> int:
    """Tokens of a JSON value (tool definitions...) as its compact JSON text."""
    if value is None:
        return 0
    return count(_encode(value).decode())


def completion_parts(answer: Any) -> list[str]:
    """The generated text of an answer in its endpoint's shape, as the pieces an estimate counts: a
    chat answer's first message (content, then each tool call's arguments), an Anthropic Messages
    answer's text blocks. Nothing for other shapes (embeddings)."""
    if not isinstance(answer, dict):
        return []
    choices = answer.get("choices")
    if isinstance(choices, list) and choices:
        message = choices[0].get("message") if isinstance(choices[0], dict) else None
        if not isinstance(message, dict):
            return []
        parts = [text_of(message.get("content"))]
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                parts.append(str(function.get("arguments") or ""))
        return parts
    if answer.get("type") == "message":  # Anthropic Messages
        return [text_of(answer.get("content"))]
    if answer.get("object") == "response":  # Responses: message text and function-call arguments
        parts = []
        for item in answer.get("output") or ():
            if isinstance(item, dict):
                parts.append(text_of(item.get("content")) if item.get("type") == "message" else str(item.get("arguments") or ""))
        return parts
    return []


def estimate(prompt: Any, answer: Any) -> Usage:
    """The usage of a call whose provider reported none (or whose stream was cut before it), marked
    ``estimated``: ``prompt`` is the request's ``messages`` (or ``input``), ``answer`` what was answered."""
    if isinstance(prompt, list):
        prompt_tokens = count_messages(prompt)
    elif isinstance(prompt, str):
        prompt_tokens = count(prompt)
    else:
        prompt_tokens = 0
    completion = sum(count(part) for part in completion_parts(answer))
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion, estimated=True)


def breakdown(messages: Any, tools: Any) -> dict[str, int]:
    """Per-part estimates: ``system_tokens``, ``user_message_tokens``, ``assistant_message_tokens``,
    ``tool_message_tokens`` and ``tools_tokens`` (the tool definitions)."""
    parts = {"system_tokens": 0, "user_message_tokens": 0, "assistant_message_tokens": 0, "tool_message_tokens": 0}
    for message in messages if isinstance(messages, list) else ():
        role = message.get("role") if isinstance(message, dict) else None
        key = {"system": "system_tokens", "developer": "system_tokens", "user": "user_message_tokens",
               "assistant": "assistant_message_tokens", "tool": "tool_message_tokens",
               "function": "tool_message_tokens"}.get(role or "", "user_message_tokens")
        parts[key] += count_message(message)
    parts["tools_tokens"] = count_json(tools) if tools else 0
    return parts


__all__ = ["breakdown", "completion_parts", "count", "estimate", "count_json", "count_message", "count_messages", "method", "preload", "text_of"]
