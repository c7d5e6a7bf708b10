"""Credentials: the request's own provider credentials, applied to every upstream attempt.

Precedence (SPEC section 3), highest first:
1. ``credential_override``: keyed by model slug (``{"gpt-4o": {"api_key": ...}}``, ``{"azure/dep": {api_key,
   api_base, api_version}}``); applies to that model only;
2. ``customer_credentials``: keyed by provider (``{"openai": {"api_key": ...}}``), or a weighted list of
   deployments ``[{"credentials": {"openai": {...}}, "weight": 1, "available_models": [...],
   "exclude_models": [...]}]``, one picked by weight among those that serve the model;
3. ``customer_api_keys`` (deprecated): ``{"<model>": "<api key>"}``;
4. the provider's keys in the config (the adapter picks one by weight when the target carries none).

A request-supplied ``api_base`` is used only when ``[upstream] api_base_allowlist`` admits it (no SSRF
into the gateway's network); otherwise the request is a 400. An entry is a host (any scheme and port),
``host:port``, ``*.suffix``, or a URL ``http(s)://host[:port]`` (that scheme, host and port only); any
other entry stops the start, naming it. The middleware runs after the
reliability stage (order 900), so each attempt's target (fallbacks included) gets its own credentials.
Keys are put on ``call.target`` only; no message this plugin makes names one.
"""

from __future__ import annotations

import random
import re
from typing import Any, NamedTuple
from urllib.parse import SplitResult, urlsplit

import httpx2
import msgspec

from respan_gateway import BadRequest, Call, CallNext, Result, Target, hookimpl
from respan_gateway.config import ConfigError
from respan_gateway.params import HEADER_VALUE_PATTERN

# Names providers use for their credentials in Respan's docs, by adapter type.
PROVIDER_ALIASES: dict[str, tuple[str, ...]] = {
    "azure": ("azure_openai", "azure"),
    "gemini": ("gemini", "google_gemini_ai", "google", "google_palm"),
    "anthropic": ("anthropic",),
    "openai": ("openai",),
    "vertex_ai": ("vertex_ai", "google_vertex_ai", "vertex_ai_beta"),
    "bedrock": ("bedrock", "aws_bedrock"),
}
# Credential fields with a place of their own on the target; the rest go to `target.extra`.
_API_BASE_KEYS = ("api_base", "base_url")
_HEADER_VALUE = re.compile(HEADER_VALUE_PATTERN)
_URL_CHARACTERS = re.compile(r"[!-~]+")  # printable ASCII: no space, tab, line break or other control
_DEFAULT_PORTS = {"http": 80, "https": 443}


class AllowedBase(NamedTuple):
    """One entry of ``api_base_allowlist``: ``scheme``/``port`` None admit any; ``host`` may be ``*.suffix``."""

    scheme: str | None
    host: str
    port: int | None

    def admits(self, scheme: str, host: str, port: int) -> bool:
        if self.scheme is not None and self.scheme != scheme:
            return False
        if self.port is not None and self.port != port:
            return False
        return self.host == host or (self.host.startswith("*.") and host.endswith(self.host[1:]))


class Credentials:
    def __init__(self, settings: Any, gateway: Any) -> None:
        self.gateway = gateway
        self.allowlist = [
            _allowed_base(i, entry, gateway.config.source)
            for i, entry in enumerate(gateway.config.upstream.api_base_allowlist) if entry.strip()
        ]

    async def __call__(self, call: Call, call_next: CallNext) -> Result:
        params = call.params
        if params.credential_override or params.customer_credentials or params.customer_api_keys:
            target = call.target
            if target is None:  # no routing stage: resolve as the core would
                if not call.model:
                    raise BadRequest("the request has no `model`: name one (or a load_balance_group)", param="model")
                target = self.gateway.catalog.resolve(call.model, params.route_provider_override)
            call.target = self.apply(call, target)
        return await call_next(call)

    def apply(self, call: Call, target: Target) -> Target:
        """A copy of ``target`` with the request's credentials for it, by precedence."""
        params = call.params
        override = _override_for(params.credential_override, target)
        if override is not None:
            return self._with(target, override, "credential_override")
        creds, deployment = self._customer(params.customer_credentials, target)
        if creds is not None:
            return self._with(target, creds, "customer_credentials", deployment)
        keys = params.customer_api_keys or {}
        key = keys.get(target.model) or keys.get(target.upstream_model)
        if key:
            return self._with(target, {"api_key": key}, "customer_api_keys")
        return target

    def _customer(self, value: Any, target: Target) -> tuple[dict[str, Any] | None, str | None]:
        if not value:
            return None, None
        names = self._provider_names(target.provider)
        if isinstance(value, dict):
            return _pick(value, names), None
        candidates: list[tuple[int, dict[str, Any], float]] = []
        for i, entry in enumerate(value):
            if not isinstance(entry, dict) or not isinstance(entry.get("credentials"), dict):
                raise BadRequest(f"`customer_credentials[{i}]` must be an object with `credentials`", param="customer_credentials")
            creds = _pick(entry["credentials"], names)
            if creds is None or not _serves(entry, target):
                continue
            weight = entry.get("weight", 1)
            if not isinstance(weight, (int, float)) or weight <= 0:
                raise BadRequest(f"`customer_credentials[{i}].weight` must be a positive number", param="customer_credentials")
            candidates.append((i, creds, float(weight)))
        if not candidates:
            return None, None
        i, creds, _ = random.choices(candidates, [c[2] for c in candidates])[0]
        return creds, f"customer_credentials[{i}]"

    def _provider_names(self, provider_id: str) -> set[str]:
        names = {provider_id}
        adapter = self.gateway.providers.get(provider_id)
        if adapter is not None:
            type_name = adapter.settings.type or provider_id
            names.add(type_name)
            names.update(PROVIDER_ALIASES.get(type_name, ()))
        return names

    def _with(self, target: Target, creds: Any, param: str, deployment: str | None = None) -> Target:
        if not isinstance(creds, dict):
            raise BadRequest(f"`{param}`: credentials must be an object such as {{\"api_key\": \"...\"}}", param=param)
        api_key = creds.get("api_key")
        if api_key is not None and not isinstance(api_key, str):
            raise BadRequest(f"`{param}`: `api_key` must be a string", param=param)
        if api_key and not _HEADER_VALUE.match(api_key):  # it goes in a header: CR/LF would split it
            raise BadRequest(f"`{param}`: `api_key` must be printable ASCII (no line break or other control character)", param=param)
        base_url = next((creds[k] for k in _API_BASE_KEYS if creds.get(k)), None)
        if base_url is not None:
            self.check_api_base(base_url, param)
        extra = {k: v for k, v in creds.items() if k != "api_key" and k not in _API_BASE_KEYS}
        return msgspec.structs.replace(
            target,
            api_key=api_key or target.api_key,
            base_url=base_url or target.base_url,
            extra={**target.extra, **extra},
            deployment=deployment or target.deployment,
        )

    def check_api_base(self, url: Any, param: str) -> None:
        if not isinstance(url, str) or not _URL_CHARACTERS.fullmatch(url):
            raise BadRequest(f"`{param}`: `api_base` must be an http(s) URL, with no space, tab or line break", param=param)
        parts = _split(url)
        if parts is None or parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise BadRequest(f"`{param}`: `api_base` must be an http(s) URL", param=param)
        if "@" in parts.netloc:
            raise BadRequest(f"`{param}`: `api_base` must not carry a user name or password (send the key as `api_key`)", param=param)
        try:
            port = parts.port or _DEFAULT_PORTS[parts.scheme]
            httpx2.URL(url)  # what the upstream client will parse: refused here rather than failing there
        except (ValueError, httpx2.InvalidURL):
            raise BadRequest(f"`{param}`: `api_base` is not a valid URL (check its port)", param=param) from None
        host = parts.hostname.lower()
        if any(entry.admits(parts.scheme, host, port) for entry in self.allowlist):
            return
        raise BadRequest(
            f"`{param}`: `api_base` host `{host}` is not allowed; the gateway's operator can admit it in "
            "[upstream] api_base_allowlist",
            param=param,
        )


def _split(url: str) -> SplitResult | None:
    try:
        return urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return None


def _allowed_base(index: int, text: str, source: str) -> AllowedBase:
    """An allowlist entry parsed, or a ConfigError naming it."""
    entry = text.strip().lower()
    url = "://" in entry
    parts = _split(entry if url else f"//{entry}")
    try:
        port = parts.port if parts is not None else None
        valid = (parts is not None and bool(parts.hostname) and "@" not in parts.netloc
                 and parts.path in ("", "/") and not parts.query and not parts.fragment
                 and (not url or parts.scheme in _DEFAULT_PORTS) and _URL_CHARACTERS.fullmatch(entry) is not None)
    except ValueError:
        valid = False
    if not valid:
        raise ConfigError(
            f"{source}: `upstream.api_base_allowlist[{index}]`: {text!r} is not a host, host:port, *.suffix "
            "or http(s)://host[:port] URL (without a path)"
        )
    assert parts is not None and parts.hostname
    if url:
        return AllowedBase(parts.scheme, parts.hostname, port or _DEFAULT_PORTS[parts.scheme])
    return AllowedBase(None, parts.hostname, port)


def _override_for(overrides: dict[str, Any] | None, target: Target) -> Any:
    if not overrides:
        return None
    for slug in (target.model, f"{target.provider}/{target.upstream_model}", target.upstream_model):
        if slug in overrides:
            return overrides[slug]
    return None


def _pick(creds: dict[str, Any], names: set[str]) -> Any:
    for name, value in creds.items():
        if name in names:
            return value
    return None


def _serves(entry: dict[str, Any], target: Target) -> bool:
    models = {target.model, target.upstream_model, f"{target.provider}/{target.upstream_model}"}
    available = entry.get("available_models")
    if available and not models & set(available):
        return False
    excluded = entry.get("exclude_models")
    return not (excluded and models & set(excluded))


@hookimpl
def register_middlewares(register: Any) -> None:
    register("credentials", Credentials, order=900)
