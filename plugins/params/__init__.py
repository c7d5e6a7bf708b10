"""Params: collect Respan params from the three channels, merge them, type them, strip them.

Channels, highest precedence first (SPEC section 2):
1. top-level body fields (the OpenAI SDK's ``extra_body``);
2. the body object ``respan_params`` (legacy ``keywordsai_params`` merged under it);
3. the header ``X-Data-Respan-Params``: base64 of a JSON object, or the JSON object itself
   (legacy ``X-Data-Keywordsai-Params`` merged under it); ``X-Respan-Customer-Identifier`` lowest.

Object params (``metadata``, ``properties``, ``customer_params``, ``cache_options``, ``retry_params``)
merge key by key with the same precedence; others are replaced whole. The result is decoded into
:class:`~respan_gateway.RespanParams` on ``call.params``; a wrong type or enum value is a 400 naming
the param. Every Respan param leaves the body; everything else goes upstream untouched.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import msgspec

from respan_gateway import BadRequest, Call, CallNext, Gateway, RespanParams, Result, hookimpl
from respan_gateway.config import describe_validation_error
from respan_gateway.hookspecs import RegisterMiddleware
from respan_gateway.params import (
    MAX_IDENTIFIER_LENGTH,
    MERGED_OBJECT_PARAMS,
    NESTED_PARAM_OBJECTS,
    PARAM_NAMES,
    PATTERN_MEANINGS,
    RetryParams,
    customer_of,
)

_decode = msgspec.json.decode
_NESTED = NESTED_PARAM_OBJECTS  # lower precedence first
_HEADERS = ("x-data-keywordsai-params", "x-data-respan-params")


class ParamsMiddleware:
    def __init__(self, settings: object, gateway: Gateway) -> None:
        pass

    async def __call__(self, call: Call, call_next: CallNext) -> Result:
        collect(call)
        return await call_next(call)


def collect(call: Call) -> None:
    """Fill ``call.params`` (and ``beta_flags``) from the request; strip the params from the body."""
    if call.rejection is not None:  # the body could not be read at all: this is where that surfaces
        raise call.rejection
    headers = _param_headers(call.headers)
    layers: list[dict[str, Any]] = []
    customer_header = headers.get("x-respan-customer-identifier")
    if customer_header:
        layers.append({"customer_identifier": customer_header})
    for name in _HEADERS:
        value = headers.get(name)
        if value:
            layers.append(_known(_header_object(name, value)))
    for name in _NESTED:
        if name in call.body:
            nested = _pop(call, name)
            if nested is None:
                continue
            if not isinstance(nested, dict):
                raise BadRequest(f"`{name}` must be an object", param=name)
            layers.append(_known(nested))
    if "metadata" in call.own_fields:
        layers += _anthropic_metadata_layers(call)
    # A field the endpoint's wire format owns (the native Anthropic endpoint's `metadata`, with its
    # `user_id`) is not the Respan param of that name.
    top = [k for k in call.body if k in PARAM_NAMES and k not in call.own_fields]
    if top:
        layers.append({k: v for k in top if (v := _pop(call, k)) is not None})
    call.params_collected = True

    route = headers.get("x-respan-route-provider")
    if route:
        layers.insert(0, {"route_provider_override": route})
    beta = headers.get("x-respan-beta")
    if beta:
        call.beta_flags = frozenset(f.strip().lower() for f in beta.split(",") if f.strip())
    if layers:
        call.params = typed(merge(layers))
        call.outcome.customer = customer_of(call.params)


_PARAM_HEADERS = ("x-respan-customer-identifier", *_HEADERS, "x-respan-route-provider", "x-respan-beta")
_RAW_PARAM_HEADERS = frozenset(name.encode() for name in _PARAM_HEADERS)


def _param_headers(headers: Any) -> dict[str, str]:
    """The request's headers that carry params (the first value of each), in one pass over its raw
    headers (Starlette's ``Headers.raw``: lower-case names) instead of a scan per name: a plain request
    has none of them."""
    raw = getattr(headers, "raw", None)
    if raw is None:  # any other mapping
        return {name: value for name in _PARAM_HEADERS if (value := headers.get(name))}
    found: dict[str, str] = {}
    for key, value in raw:
        if key[:2] == b"x-" and key in _RAW_PARAM_HEADERS:
            name = key.decode("latin-1")
            if name not in found:
                found[name] = value.decode("latin-1")
    return found


def _anthropic_metadata_layers(call: Call) -> list[dict[str, Any]]:
    """Native Anthropic endpoint: params in ``metadata.respan_params`` (legacy ``metadata.keywordsai_params``).

    They leave ``metadata``; Anthropic's own keys (``user_id``) stay; an emptied ``metadata`` is dropped.
    """
    try:
        metadata = call.get("metadata")
    except msgspec.DecodeError:
        raise BadRequest("`metadata` holds a number out of range", param="metadata") from None
    if not isinstance(metadata, dict) or not any(name in metadata for name in _NESTED):
        return []
    layers = []
    for name in _NESTED:
        nested = metadata.pop(name, None)
        if nested is None:
            continue
        if not isinstance(nested, dict):
            raise BadRequest(f"`metadata.{name}` must be an object", param=f"metadata.{name}")
        layers.append(_known(nested))
    if metadata:
        call.set("metadata", metadata)
    else:
        call.pop("metadata")
    return layers


def merge(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge channel dicts, lowest precedence first; object params merge key by key."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            old = merged.get(key)
            if key in MERGED_OBJECT_PARAMS and isinstance(old, dict) and isinstance(value, dict):
                merged[key] = {**old, **value}
            else:
                merged[key] = value
    return merged


def typed(merged: dict[str, Any]) -> RespanParams:
    try:
        params = msgspec.convert(merged, RespanParams)
    except msgspec.ValidationError as exc:
        text = describe_validation_error(exc)
        for pattern, meaning in PATTERN_MEANINGS.items():
            text = text.replace(f"expected `str` matching regex {pattern!r}", f"must be {meaning}")
        param = text[1:text.index("`", 1)].replace("[...]", "") if text.startswith("`") else None
        raise BadRequest(f"invalid Respan param {text}", param=param) from None
    if params.retries is not None:
        retry = params.retry_params or RetryParams()
        if retry.num_retries is None:
            params.retry_params = msgspec.structs.replace(retry, num_retries=params.retries)
    if params.customer_identifier is not None:
        params.customer_identifier = str(params.customer_identifier)[:MAX_IDENTIFIER_LENGTH]
    return params


def _pop(call: Call, name: str) -> Any:
    """A body field taken out, decoded; a number out of range (``1e400``, an integer past 64 bits
    somewhere inside) is a 400 naming the field."""
    try:
        return call.pop(name)
    except msgspec.DecodeError as exc:  # ValidationError included: msgspec's "Number out of range"
        raise BadRequest(f"invalid Respan param `{name}`: {str(exc).partition(' - at ')[0].lower()}", param=name) from None


def _known(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k in PARAM_NAMES and v is not None}


def _header_object(name: str, value: str) -> dict[str, Any]:
    """Base64 of a JSON object; a plain JSON object is accepted too (SPEC: be lenient)."""
    value = value.strip()
    try:
        if value.startswith("{"):
            obj = _decode(value)
        else:
            padded = value + "=" * (-len(value) % 4)
            raw = base64.urlsafe_b64decode(padded) if ("-" in value or "_" in value) else base64.b64decode(padded)
            obj = _decode(raw)
    except (msgspec.DecodeError, binascii.Error, ValueError, RecursionError):
        obj = None
    if not isinstance(obj, dict):
        raise BadRequest(f"the {_display(name)} header must be base64-encoded JSON of an object", param=_display(name))
    return obj


def _display(header: str) -> str:
    return "-".join(part.capitalize() for part in header.split("-"))


@hookimpl
def register_middlewares(register: RegisterMiddleware) -> None:
    register("params", ParamsMiddleware, order=200)
