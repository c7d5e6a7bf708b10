"""A stored answer: a small header (who stored it, when, for how long, its usage) and the answer's bytes.

Layout: ``RC1`` + 4 bytes of header length (big-endian) + the header (JSON) + the answer (JSON, in the
endpoint's non-stream shape). The header comes first so that the admin purge reads only the first
bytes of each entry (Redis ``GETRANGE``) to filter by model or customer.
"""

from __future__ import annotations

import struct

import msgspec

from respan_gateway.cost import Usage

MAGIC = b"RC1"
_LENGTH = struct.Struct(">I")
HEAD = len(MAGIC) + _LENGTH.size


class EntryMeta(msgspec.Struct, kw_only=True):
    tenant: str
    endpoint: str
    # The model that answered (the request's slug) and the request's customer, for the purge filters.
    model: str | None = None
    customer: str | None = None
    # Wall-clock seconds at storage, and the entry's lifetime in seconds.
    created: float
    ttl: float
    usage: Usage | None = None


_encode_meta = msgspec.json.Encoder().encode
_decode_meta = msgspec.json.Decoder(EntryMeta).decode


def pack(meta: EntryMeta, answer: bytes) -> bytes:
    header = _encode_meta(meta)
    return b"".join((MAGIC, _LENGTH.pack(len(header)), header, answer))


def header_length(prefix: bytes) -> int | None:
    """The length of the header of an entry that starts with ``prefix`` (None: not an entry)."""
    if len(prefix) < HEAD or not prefix.startswith(MAGIC):
        return None
    return _LENGTH.unpack_from(prefix, len(MAGIC))[0]


def read_meta(prefix: bytes) -> EntryMeta | None:
    """The header of an entry from its first bytes (None when they hold no whole header)."""
    length = header_length(prefix)
    if length is None or len(prefix) < HEAD + length:
        return None
    try:
        return _decode_meta(prefix[HEAD:HEAD + length])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def unpack(value: bytes) -> tuple[EntryMeta, bytes] | None:
    """(header, answer bytes) of a stored entry; None for bytes that are not one (another version)."""
    meta = read_meta(value)
    if meta is None:
        return None
    return meta, value[HEAD + header_length(value):]  # type: ignore[operator]


__all__ = ["EntryMeta", "HEAD", "pack", "read_meta", "unpack"]
