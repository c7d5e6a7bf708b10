"""Respan's request parameters as one typed struct.

This is the API surface of the gateway beyond OpenAI's: the ``params`` plugin collects these fields
from the three channels (top-level body fields, ``respan_params``/``keywordsai_params``, the
``X-Data-Respan-Params`` header), merges them and decodes them into :class:`RespanParams`; later stages
read the typed fields. Names and meanings follow ``shared/reference/respan-api-notes.md`` section 4.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from .log import SECRET_KEY_NAMES
from .outcome import Customer

if TYPE_CHECKING:
    from .call import Call


# Ranges checked when the params are decoded (a 400 naming the param): every integer fits the signed
# 64-bit columns it may be stored in, and every float is finite (JSON's 1e400 is out of range).
INT64_MAX = 2**63 - 1
Count = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
Int64 = Annotated[int, msgspec.Meta(ge=-INT64_MAX - 1, le=INT64_MAX)]
Amount = Annotated[float, msgspec.Meta(ge=0, le=1.7976931348623157e308)]  # not negative, not inf, not nan
Finite = Annotated[float, msgspec.Meta(ge=-1.7976931348623157e308, le=1.7976931348623157e308)]
# What may go in an HTTP header: a token name (no space, no colon), a value of visible ASCII
# characters, spaces and tabs (no CR, LF or NUL, which would split the header; the upstream client
# encodes header values as ASCII).
HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z"
HEADER_VALUE_PATTERN = r"^[\t\x20-\x7e]*\Z"
HeaderName = Annotated[str, msgspec.Meta(pattern=HEADER_NAME_PATTERN)]
HeaderValue = Annotated[str, msgspec.Meta(pattern=HEADER_VALUE_PATTERN)]
#: What a pattern above means, for the 400 a client reads.
PATTERN_MEANINGS = {
    HEADER_NAME_PATTERN: "an HTTP header name (letters, digits and !#$%&'*+-.^_`|~; no space or control character)",
    HEADER_VALUE_PATTERN: "usable in an HTTP header (printable ASCII, spaces and tabs; no CR, LF or other control character)",
}


class Params(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Base for the param structs. Unknown keys inside an object param are ignored (forward compatible)."""


class RetryParams(Params):
    retry_enabled: bool = True
    num_retries: Count | None = None
    retry_after: Amount | None = None
    # The gateway's own: resend the same model after a timeout even when a fallback is left.
    retry_on_timeout: bool | None = None


class LoadBalanceModel(Params):
    model: str
    weight: Amount = 1.0
    credentials: dict[str, Any] | None = None


class LoadBalanceGroup(Params):
    group_id: str
    models: list[LoadBalanceModel] | None = None


class CacheOptions(Params):
    cache_by_customer: bool = False
    is_cached_by_model: bool = False
    omit_log: bool = False
    omit_logs: bool = False  # synonym seen in Respan's docs


class CustomerParams(Params):
    customer_identifier: str | int | None = None
    group_identifier: str | None = None
    name: str | None = None
    email: str | None = None
    period_budget: Amount | None = None
    budget_duration: Literal["daily", "weekly", "monthly", "yearly"] | None = None
    period_start: str | None = None
    period_end: str | None = None
    total_budget: Amount | None = None
    markup_percentage: Finite | None = None
    rate_limit: Count | None = None
    metadata: dict[str, Any] | None = None


class OverrideConfig(Params):
    messages_override_mode: Literal["override", "append"] = "override"


class PromptParams(Params):
    prompt_id: str
    variables: dict[str, Any] = {}
    version: Int64 | Literal["latest"] | None = None
    echo: bool = False
    override: bool = False
    override_params: dict[str, Any] | None = None
    override_config: OverrideConfig | None = None
    schema_version: Literal[1, 2] = 1
    patch: dict[str, Any] | None = None


class ObservabilityParams(Params):
    """The observability params (SPEC section 8) that a log record keeps under the same names: the one
    list of them. :class:`RespanParams` and the logging plugin's record both derive from it."""

    metadata: dict[str, Any] | None = None
    properties: dict[str, Any] | None = None
    custom_identifier: str | None = None
    thread_identifier: str | None = None
    group_identifier: str | None = None
    span_name: str | None = None
    trace_unique_id: str | None = None
    span_unique_id: str | None = None
    span_parent_id: str | None = None
    span_workflow_name: str | None = None
    trace_group_identifier: str | None = None
    session_identifier: str | None = None
    positive_feedback: bool | None = None
    prompt_unit_price: float | None = None
    completion_unit_price: float | None = None


#: The names of :class:`ObservabilityParams`, in order.
OBSERVABILITY_FIELDS: tuple[str, ...] = ObservabilityParams.__struct_fields__


class RespanParams(ObservabilityParams):
    """Every Respan param a request may carry. All optional; defaults mean "not asked for"."""

    # Routing and reliability (SPEC section 4).
    fallback_models: list[str] | None = None
    disable_fallback: bool = False
    retry_params: RetryParams | None = None
    # Shortcut for retry_params.num_retries (Respan's API reference lists it top-level).
    retries: Count | None = None
    load_balance_group: LoadBalanceGroup | None = None
    loadbalance_models: list[LoadBalanceModel] | None = None
    load_balance_models: list[LoadBalanceModel] | None = None
    models: list[str] | None = None
    exclude_models: list[str] | None = None
    exclude_providers: list[str] | None = None
    model_name_map: dict[str, str] | None = None
    route_provider_override: str | None = None
    timeout: Amount | None = None
    # The gateway's own: seconds until a stream's first token (content, tool call or finish), this request.
    first_token_timeout: Amount | None = None
    # Credentials (SPEC section 3).
    customer_credentials: dict[str, Any] | list[dict[str, Any]] | None = None
    credential_override: dict[str, dict[str, Any]] | None = None
    customer_api_keys: dict[str, HeaderValue] | None = None
    extra_headers: dict[HeaderName, HeaderValue] | None = None
    # Caching (SPEC section 5).
    cache_enabled: bool = False
    cache_ttl: Amount | None = None
    cache_options: CacheOptions | None = None
    # Prompts (SPEC section 6).
    prompt: PromptParams | None = None
    # Customers (SPEC section 7).
    customer_identifier: str | int | None = None
    customer_email: str | None = None
    customer_name: str | None = None
    customer_params: CustomerParams | None = None
    # Observability (SPEC section 8): the fields of ObservabilityParams, and these.
    disable_log: bool = False
    request_breakdown: bool = False
    prompt_unit_price: Amount | None = None
    completion_unit_price: Amount | None = None


def request_secrets(params: RespanParams) -> tuple[str, ...]:
    """The credentials a request carries, to redact from what an error of its upstream says: every
    value of ``customer_api_keys``, the values under credential-like names (``api_key``, ``*token``,
    ``secret``...) anywhere in ``credential_override`` and ``customer_credentials``, and
    ``extra_headers`` of credential-like names."""
    found: list[str] = []

    def walk(value: Any, secret: bool) -> None:
        if isinstance(value, str):
            if secret:
                found.append(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, secret or bool(SECRET_KEY_NAMES.search(str(key))))
        elif isinstance(value, list):
            for item in value:
                walk(item, secret)

    walk(params.credential_override, False)
    walk(params.customer_credentials, False)
    walk(params.customer_api_keys, True)
    walk(params.extra_headers, False)
    return tuple(found)


#: Body keys that are Respan params (removed before the upstream call).
PARAM_NAMES: frozenset[str] = frozenset(RespanParams.__struct_fields__)
#: Body objects that carry Respan params nested (``respan_params``, legacy ``keywordsai_params``).
NESTED_PARAM_OBJECTS = ("keywordsai_params", "respan_params")


def strip_params(call: Call) -> None:
    """Take every Respan param out of the body, unread: what the core does before a provider call
    when no stage collected them (the ``params`` plugin disabled), so that no param, credentials
    included, ever reaches a provider. A field the endpoint's wire format owns (``call.own_fields``,
    Anthropic's ``metadata``) stays, less the Respan params nested in it."""
    for name in [k for k in call.body if (k in PARAM_NAMES and k not in call.own_fields) or k in NESTED_PARAM_OBJECTS]:
        call.pop(name)
    for name in call.own_fields:
        value = call.get(name)
        if isinstance(value, dict) and any(nested in value for nested in NESTED_PARAM_OBJECTS):
            kept = {k: v for k, v in value.items() if k not in NESTED_PARAM_OBJECTS}
            if kept:
                call.set(name, kept)
            else:
                call.pop(name)
    call.params_collected = True
#: Object-valued params merged key by key across the channels.
MERGED_OBJECT_PARAMS: frozenset[str] = frozenset(
    {"metadata", "properties", "customer_params", "cache_options", "retry_params"}
)
#: Longest customer identifier kept (SPEC section 7); longer ones are cut.
MAX_IDENTIFIER_LENGTH = 254

_encode = msgspec.json.Encoder().encode


def customer_of(params: RespanParams) -> Customer | None:
    """The call's customer, normalised once: ``customer_identifier`` (else ``customer_params``'s),
    cut to :data:`MAX_IDENTIFIER_LENGTH`; name and email from the top-level params, else
    ``customer_params``; the group from ``customer_params.group_identifier``. None without an identifier."""
    cp = params.customer_params
    identifier = params.customer_identifier
    if identifier is None and cp is not None:
        identifier = cp.customer_identifier
    if identifier is None:
        return None
    return Customer(
        identifier=str(identifier)[:MAX_IDENTIFIER_LENGTH],
        name=params.customer_name if params.customer_name is not None else (cp.name if cp else None),
        email=params.customer_email if params.customer_email is not None else (cp.email if cp else None),
        group=cp.group_identifier if cp else None,
    )


def coerce_metadata(metadata: Any) -> dict[str, str] | None:
    """Respan keeps ``metadata`` values as strings: strings as they are, ``true``/``false`` for
    booleans, numbers as written, objects and lists as compact JSON, null as ``""``."""
    if not isinstance(metadata, dict):
        return None
    out: dict[str, str] = {}
    for key, value in metadata.items():
        if isinstance(value, str):
            out[str(key)] = value
        elif value is None:
            out[str(key)] = ""
        else:
            out[str(key)] = _encode(value).decode()
    return out
