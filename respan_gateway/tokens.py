"""Offline token estimates: for answers that arrive without usage, and per-part token breakdowns.

:func:`count` counts with OpenAI's ``o200k_base`` vocabulary (or ``cl100k_base``: :func:`use`),
without its BPE engine: the text is split by the encoding's own pre-tokenizer pattern and each piece
that is a token of the vocabulary counts one; a longer piece is cut greedily into the longest
vocabulary tokens. Measured against the real BPE (docs/performance.md) the counts are within about
2% on English, code, German, French, Chinese and JSON. The vocabulary is kept as a sorted array of
CRC-32s (0.8 MB; ~3.5 MB with the pattern and the ``regex`` module), where the Rust BPE of
``bpe-openai`` cost ~130 MB per worker; its wheel only supplies the vocabulary file (``tiktoken``
downloads its files at run time, which a gateway without internet cannot do). It is an *estimate*
for other providers' models in any case.

The vocabulary is loaded on first need, in a thread (~0.5 s); until then (or if its file is missing)
:func:`quick` answers, so no request waits for it, and a process whose providers report usage never
loads it. :func:`quick` (UTF-8 bytes/4) is also the cheap bound of a reservation that is settled
afterwards (the ``limits`` plugin's).
"""

from __future__ import annotations

import re
import threading
from bisect import bisect_left
from collections.abc import Callable
from typing import Any
from zlib import crc32

import msgspec

from .cost import Usage

#: The vocabulary used; :func:`use` changes it ("heuristic" = never load one).
ENCODING = "o200k_base"
# Per-message framing tokens of the chat format (role, separators), as OpenAI's cookbook counts them.
TOKENS_PER_MESSAGE = 3

# The pre-tokenizer patterns of the encodings, as tiktoken defines them (tiktoken_ext/openai_public.py).
_PATTERNS = {
    "o200k_base": "|".join([
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]),
    "cl100k_base": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""",
}
# o200k_base's pattern for ASCII text, for the stdlib `re` (some 8x faster than `regex` with its Unicode
# classes): the letter classes are their ASCII members ([A-Z], [a-z]; Lt, Lm, Lo and M have none), digits
# [0-9], and `\s` `regex`'s ASCII whitespace (not \x1c-\x1f, which `re`'s includes). Splits the same.
_ASCII_WS = r"\t\n\x0b\x0c\r "
_ASCII_PATTERNS = {
    "o200k_base": "|".join([
        r"""[^\r\nA-Za-z0-9]?[A-Z]*[a-z]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\nA-Za-z0-9]?[A-Z]+[a-z]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[0-9]{1,3}""",
        rf""" ?[^{_ASCII_WS}A-Za-z0-9]+[\r\n/]*""",
        rf"""[{_ASCII_WS}]*[\r\n]+""",
        rf"""[{_ASCII_WS}]+(?![^{_ASCII_WS}])""",
        rf"""[{_ASCII_WS}]+""",
    ]),
}
# The longest token tried when a piece is cut (bytes); longer vocabulary tokens are rare runs of
# spaces or punctuation, and trying them costs more than the little they change.
_LONGEST = 24
# Pieces counted lately (a bounded cache: emptied when full).
_CACHE_SIZE = 8192

_tokenizer: Any = None  # None: not loaded yet; False: none (heuristic chosen, or the data is missing)
_lock = threading.Lock()
_loading: threading.Thread | None = None
_encode = msgspec.json.Encoder().encode


class Vocabulary:
    """An encoding's vocabulary as a sorted array of the tokens' CRC-32s, and its pre-tokenizer."""

    __slots__ = ("keys", "split", "split_ascii", "cache")

    def __init__(self, encoding: str) -> None:
        import base64
        import gzip
        import importlib.util
        import io
        import itertools
        from array import array
        from pathlib import Path

        import regex  # the pre-tokenizer patterns need Unicode classes (\p{L}) that `re` lacks

        spec = importlib.util.find_spec("bpe_openai")  # its data files only: nothing of it is imported
        if spec is None or spec.origin is None:
            raise FileNotFoundError("bpe-openai is not installed")
        raw = gzip.decompress((Path(spec.origin).parent / "data" / f"{encoding}.tiktoken.gz").read_bytes())
        b64decode = base64.b64decode
        # Line by line into C integers, sorted, duplicates dropped: no list of 200,000 lines nor a set of
        # as many ints at once (a 74 MB peak against 47), whose freed memory the worker kept.
        crcs = array("I", (crc32(b64decode(line.partition(b" ")[0])) for line in io.BytesIO(raw) if line.strip()))
        del raw
        self.keys = array("I", (key for key, _ in itertools.groupby(sorted(crcs))))
        self.split = regex.compile(_PATTERNS[encoding]).findall
        self.cache: dict[str, int] = {}
        ascii_pattern = _ASCII_PATTERNS.get(encoding)
        self.split_ascii = re.compile(ascii_pattern).findall if ascii_pattern else None

    def _known(self, piece: bytes) -> bool:
        keys = self.keys
        key = crc32(piece)
        i = bisect_left(keys, key)
        return i < len(keys) and keys[i] == key

    def _bytes(self, piece: bytes) -> int:
        """The longest vocabulary tokens from the left, greedily (BPE's own merges differ a little)."""
        n, i, size = 0, 0, len(piece)
        while i < size:
            j = min(size, i + _LONGEST)
            while j > i + 1 and not self._known(piece[i:j]):
                j -= 1
            n, i = n + 1, j
        return n

    def _piece(self, piece: str) -> int:
        data = piece.encode("utf-8", "surrogatepass")
        if self._known(data):
            return 1
        if len(data) == len(piece):
            return self._bytes(data)
        # Other scripts: cut at characters (a token inside a character is rare), up to 8 at a time.
        n, i, size = 0, 0, len(piece)
        while i < size:
            j = min(size, i + 8)
            while j > i + 1 and not self._known(piece[i:j].encode("utf-8", "surrogatepass")):
                j -= 1
            n += 1 if j > i + 1 or self._known(piece[i].encode("utf-8", "surrogatepass")) else self._bytes(piece[i].encode("utf-8", "surrogatepass"))
            i = j
        return n

    def count(self, text: str) -> int:
        cache = self.cache
        total = 0
        split = self.split_ascii if self.split_ascii is not None and text.isascii() else self.split
        for piece in split(text):
            n = cache.get(piece)
            if n is None:
                n = self._piece(piece)
                if len(cache) >= _CACHE_SIZE:
                    cache.clear()
                cache[piece] = n
            total += n
        return total


def use(encoding: str) -> None:
    """Choose the vocabulary before first use: "o200k_base", "cl100k_base", or "heuristic"
    (UTF-8 bytes/4, nothing loaded at all)."""
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
                _tokenizer = Vocabulary(ENCODING)
            except Exception:  # data missing or broken: the heuristic stays
                _tokenizer = False
    return _tokenizer


def preload() -> threading.Thread:
    """Start loading the vocabulary in a daemon thread (once); the thread is returned to join on."""
    global _loading
    with _lock:
        if _loading is None:
            thread = threading.Thread(target=_load, name="tokenizer-load", daemon=True)
            thread.start()
            _loading = thread  # started: whoever sees it may join it
        return _loading


def method() -> str:
    """What :func:`count` uses right now: the encoding name, or ``"heuristic"``."""
    return ENCODING if _tokenizer else "heuristic"


def quick(text: str) -> int:
    """About one token per 4 bytes of UTF-8 (at least 1): no vocabulary, a few nanoseconds. Above the
    real count for code and most languages' prose, a few percent under for English prose and CJK."""
    if not text:
        return 0
    size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    return max(1, (size + 3) // 4)


def count(text: str) -> int:
    """Tokens in ``text`` (the vocabulary when loaded, else :func:`quick`, and the loading starts)."""
    if not text:
        return 0
    tokenizer = _tokenizer
    if tokenizer:
        return int(tokenizer.count(text))
    if tokenizer is None and _loading is None:  # False = heuristic chosen, or the data is missing
        preload()
    return quick(text)


def text_of(content: Any) -> str:
    """The text of a message ``content``: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def count_message(message: Any, counter: Callable[[str], int] = count) -> int:
    """Tokens of one message (``counter``: :func:`count`, or :func:`quick` for a cheap bound)."""
    if not isinstance(message, dict):
        return 0
    total = TOKENS_PER_MESSAGE + counter(text_of(message.get("content")))
    for field in ("arguments", "output"):  # Responses items: a function call and its output
        if isinstance(message.get(field), str):
            total += counter(message[field])
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            total += counter(str(function.get("name") or "")) + counter(str(function.get("arguments") or ""))
    return total


def count_messages(messages: Any, counter: Callable[[str], int] = count) -> int:
    """Prompt tokens of a chat ``messages`` list (plus the 3 tokens that prime the answer)."""
    if not isinstance(messages, list) or not messages:
        return 0
    return sum(count_message(m, counter) for m in messages) + 3


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


def estimate(prompt: Any, answer: Any, counter: Callable[[str], int] = count) -> Usage:
    """The usage of a call whose provider reported none (or whose stream was cut before it), marked
    ``estimated``: ``prompt`` is the request's ``messages`` (or ``input``), ``answer`` what was answered.
    ``counter``: :func:`count`; :func:`quick` for a bound that is settled afterwards (a reservation)."""
    if isinstance(prompt, list):
        prompt_tokens = count_messages(prompt, counter)
    elif isinstance(prompt, str):
        prompt_tokens = counter(prompt)
    else:
        prompt_tokens = 0
    completion = sum(counter(part) for part in completion_parts(answer))
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


__all__ = ["Vocabulary", "breakdown", "completion_parts", "count", "quick", "use", "estimate", "count_json", "count_message", "count_messages", "method", "preload", "text_of"]
