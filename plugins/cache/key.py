"""The cache key: a hash of the canonical form of everything that changes the answer (README.md, "The key").

The canonical form is a JSON document with sorted keys at every level, so the same request with its
keys in another order has the same key. Only its SHA-256 is stored (a key is 64 hex characters,
whatever the size of the conversation).
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from respan_gateway import Call, Endpoint
from respan_gateway.params import NESTED_PARAM_OBJECTS, PARAM_NAMES, CacheOptions

#: Bumped when the canonical form changes, so that old entries are never read as new ones.
KEY_VERSION = 1

_canonical = msgspec.json.Encoder(order="sorted").encode
_decode = msgspec.json.decode
_NO_OPTIONS = CacheOptions()


def options_of(call: Call) -> CacheOptions:
    return call.params.cache_options or _NO_OPTIONS


def canonical(call: Call, endpoint: Endpoint, ignored: frozenset[str]) -> bytes:
    """The canonical form of ``call``'s key (what is hashed)."""
    options = options_of(call)
    body: dict[str, Any] = {}
    for name, raw in call.body.items():
        if name == "model" or name in ignored or name in NESTED_PARAM_OBJECTS:
            continue
        if name in PARAM_NAMES and name not in call.own_fields:
            continue
        body[name] = _decode(raw)
    customer = call.outcome.customer
    return _canonical({
        "v": KEY_VERSION,
        "endpoint": call.kind,
        "tenant": call.principal.tenant,
        "environment": call.principal.environment,
        "model": call.model if options.is_cached_by_model else None,
        "customer": (customer.identifier if customer is not None else None) if options.cache_by_customer else None,
        "headers": {name: call.headers.get(name) for name in endpoint.key_headers if name in call.headers},
        "body": body,
    })


def digest(call: Call, endpoint: Endpoint, ignored: frozenset[str]) -> str:
    """The key of ``call``: the SHA-256 (hex) of its canonical form."""
    return hashlib.sha256(canonical(call, endpoint, ignored)).hexdigest()


__all__ = ["KEY_VERSION", "canonical", "digest", "options_of"]
