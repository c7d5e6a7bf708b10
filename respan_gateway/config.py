"""The gateway's configuration: one TOML file decoded into typed msgspec structs.

The core owns the sections below (``server``, ``upstream``, ``plugins``, ``providers``, ``models``);
every other top-level section belongs to the plugin of that name, which declares its struct when it
registers (see :mod:`respan_gateway.hookspecs`). Strings may reference the environment as ``${VAR}``
(required) or ``${VAR:-default}``. An unknown key, a wrong type or a missing variable stops the start
with a :class:`ConfigError` naming the key. The reference is ``docs/config.md``.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec


class ConfigError(Exception):
    """The config file cannot be used; the message names the file and the key."""


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Base for every config struct, a plugin's included: unknown keys are errors."""


class ServerSettings(Settings):
    host: str = "127.0.0.1"
    port: int = 8000
    # Worker processes of `respan-gateway serve`, or "auto": one per core available to the process
    # (its CPU affinity, bounded by a cgroup CPU quota such as a container's CPU limit).
    workers: int | Literal["auto"] = 1
    # Hypercorn's graceful shutdown: how long in-flight streams may take to finish on SIGTERM.
    graceful_timeout: float = 60.0
    backlog: int = 2048
    keep_alive_timeout: float = 75.0
    # Requests one worker answers at once (streams count until they end); more get a fast 503 with
    # Retry-After instead of queueing. /healthz and /readyz are never refused. 0 = no limit.
    max_in_flight: int = 1000
    # Largest request body accepted; larger is a 413.
    max_body_bytes: int = 32 * 1024 * 1024
    # Show loaded plugins and versions at GET /-/plugins.
    expose_plugins: bool = True


class UpstreamSettings(Settings):
    """The one shared upstream HTTP client of each process."""

    max_connections: int = 1000
    connect_timeout: float = 10.0
    # Longest wait for any single read from the provider (first byte, or gap between stream chunks).
    read_timeout: float = 600.0
    write_timeout: float = 60.0
    pool_timeout: float = 30.0
    # Which client carries upstream requests (respan_gateway.upstream): "aiohttp" (default, straight on
    # aiohttp, measured fastest) or "httpx2" (httpx2's httpcore pool, the reference). See docs/performance.md.
    transport: str = "aiohttp"
    # Largest answer body read from a provider (non-streamed) and largest single event (or line) of
    # its stream; larger is a 502 `upstream_response_too_large` (an error event once streaming).
    max_body_bytes: int = 64 * 1024 * 1024
    max_event_bytes: int = 16 * 1024 * 1024
    # Hosts a request-supplied `api_base` may point at (credential_override); empty = none allowed.
    api_base_allowlist: list[str] = []


class PluginsSettings(Settings):
    # Middleware order. Empty = every loaded plugin's middleware, sorted by its declared default order.
    pipeline: list[str] = []
    # Observers of finished calls, in order. Empty = every loaded plugin's observers, in registration order.
    observers: list[str] = []
    # Plugins blocked before entry points load: never imported, never run.
    disabled: list[str] = []


class ProviderKey(Settings):
    """One deployment of a provider: a key, optionally its own endpoint, and its share of traffic."""

    api_key: str = ""
    weight: float = 1.0
    # Another endpoint of the same provider (a replica, a region); empty = the provider's base_url.
    base_url: str = ""
    # Shown as the attempt's `deployment` in logs; default "<provider id>-<position>".
    name: str = ""


class ProviderSettings(Settings):
    """Settings common to every provider; an adapter may declare a subclass with more keys."""

    # The adapter that speaks to this provider ("openai", "openai_compatible", "mock", ...).
    # Defaults to the provider's id when that names an adapter.
    type: str = ""
    base_url: str = ""
    api_key: str = ""
    # Several keys, picked by weight; used instead of `api_key` when given.
    keys: list[ProviderKey] = []
    # Extra headers sent on every request to this provider.
    headers: dict[str, str] = {}
    # Per-provider timeouts (seconds); unset = the [upstream] defaults.
    connect_timeout: float | None = None
    read_timeout: float | None = None


class ModelEntry(Settings):
    """One slug of the model catalog."""

    provider: str
    # The model name the provider knows; defaults to the slug (without a provider prefix).
    upstream_model: str = ""
    # USD per 1M tokens.
    input_cost: float = 0.0
    output_cost: float = 0.0
    cache_read_cost: float | None = None
    cache_write_cost: float | None = None
    context_window: int | None = None
    max_output_tokens: int | None = None
    capabilities: list[str] = []
    mode: Literal["chat", "embedding", "responses"] = "chat"


class DatabaseSettings(Settings):
    """The one database of a process, shared by the plugins that keep state (see respan_gateway.database)."""

    # "sqlite:///<relative path>", "sqlite:////<absolute path>" (embedded default, WAL mode), or
    # "postgresql://user@host:5432/db" (shared by replicas).
    url: str = "sqlite:///data/respan.sqlite3"
    # PostgreSQL: the schema the tables live in (created if missing); empty = the server's search_path.
    schema: str = ""
    # PostgreSQL: connections per worker process.
    pool_size: int = 10
    connect_timeout: float = 5.0
    # Longest any one statement may take before the store counts as unavailable.
    command_timeout: float = 30.0


class StateSettings(Settings):
    """``[state]``: where replicas share state (the Redis client of respan_gateway.state)."""

    # "" = in the process (the embedded default; one process). "redis://[user:password@]host:6379/0",
    # "rediss://..." (TLS) or "unix:///path/redis.sock" = shared by every process pointed at it.
    redis_url: str = ""
    # Seconds to open a connection, and the longest one command may take, before Redis counts as
    # unreachable for that command (the plugin's fallback then applies).
    connect_timeout: float = 1.0
    command_timeout: float = 0.5
    # Connections per worker process (a command waits for a free one up to command_timeout).
    max_connections: int = 64
    # Every key the gateway writes starts with this (several gateways may share one Redis).
    key_prefix: str = "respan:"


class CoreSettings(Settings):
    server: ServerSettings = ServerSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    plugins: PluginsSettings = PluginsSettings()
    database: DatabaseSettings = DatabaseSettings()
    state: StateSettings = StateSettings()
    models: dict[str, ModelEntry] = {}


CORE_SECTIONS = frozenset({"server", "upstream", "plugins", "database", "state", "models", "providers"})


class Config:
    """A loaded config: the core's typed sections, the raw provider tables and the plugins' raw sections.

    Provider tables and plugin sections are decoded into their own structs once the plugins that
    declare those structs are loaded (:meth:`section`, :meth:`provider_settings`).
    """

    def __init__(self, data: dict[str, Any], source: str = "<config>") -> None:
        self.source = source
        self.raw = data
        core = {k: v for k, v in data.items() if k in CORE_SECTIONS and k not in ("providers", "models")}
        models = data.get("models", {})
        if not isinstance(models, dict):
            raise ConfigError(f"{source}: `models`: expected a table of [models.\"<slug>\"] tables")
        # Entry by entry, so that an error names the slug (msgspec says `models[...]`).
        core["models"] = {slug: _convert(entry, ModelEntry, source, prefix=f"models.{slug}") for slug, entry in models.items()}
        self.core: CoreSettings = _convert(core, CoreSettings, source)
        providers = data.get("providers", {})
        if not isinstance(providers, dict) or not all(isinstance(v, dict) for v in providers.values()):
            raise ConfigError(f"{source}: `providers`: expected a table of [providers.<id>] tables")
        self.providers_raw: dict[str, dict[str, Any]] = providers
        self.plugin_sections: dict[str, Any] = {k: v for k, v in data.items() if k not in CORE_SECTIONS}

    @property
    def server(self) -> ServerSettings:
        return self.core.server

    @property
    def upstream(self) -> UpstreamSettings:
        return self.core.upstream

    @property
    def plugins(self) -> PluginsSettings:
        return self.core.plugins

    @property
    def database(self) -> DatabaseSettings:
        return self.core.database

    @property
    def state(self) -> StateSettings:
        return self.core.state

    @property
    def models(self) -> dict[str, ModelEntry]:
        return self.core.models

    def section(self, name: str, settings_type: type[Settings]) -> Any:
        """The plugin section ``[name]`` decoded into ``settings_type`` (its defaults when absent)."""
        return _convert(self.plugin_sections.get(name, {}), settings_type, self.source, prefix=name)

    def provider_settings(self, provider_id: str, settings_type: type[Settings]) -> Any:
        return _convert(
            self.providers_raw[provider_id], settings_type, self.source, prefix=f"providers.{provider_id}"
        )

    def check_sections(self, known: set[str]) -> None:
        """Fail on a top-level section that no core part or loaded plugin claims."""
        ignored = set(self.core.plugins.disabled)
        for name in self.plugin_sections:
            if name not in known and name not in ignored:
                raise ConfigError(
                    f"{self.source}: unknown section `{name}` (no core section and no loaded plugin has that name)"
                )

    @classmethod
    def from_text(cls, text: str, source: str = "<config>", env: dict[str, str] | None = None) -> Config:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
        return cls(_interpolate(data, os.environ if env is None else env, source, ""), source)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], env: dict[str, str] | None = None) -> Config:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
        return cls.from_text(text, str(p), env)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<config>") -> Config:
        return cls(data, source)


def find_config_file(explicit: str | None = None) -> Path:
    """``--config``, else ``$RESPAN_GATEWAY_CONFIG``, else ``./config/gateway.toml``."""
    candidate = explicit or os.environ.get("RESPAN_GATEWAY_CONFIG") or "config/gateway.toml"
    path = Path(candidate)
    if not path.is_file():
        raise ConfigError(
            f"config file {path} not found: pass --config FILE or set RESPAN_GATEWAY_CONFIG"
        )
    return path


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(value: Any, env: Any, source: str, path: str) -> Any:
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"{source}: `{path}` references ${{{name}}}, which is not set")

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, env, source, f"{path}.{k}" if path else k) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env, source, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _convert(data: Any, settings_type: type[Any], source: str, prefix: str = "") -> Any:
    try:
        return msgspec.convert(data, settings_type)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc, prefix)}") from None


def describe_validation_error(exc: msgspec.ValidationError, prefix: str = "") -> str:
    """Turn msgspec's "Expected `int`, got `str` - at `$.a.b`" into "`a.b`: expected `int`, got `str`"."""
    text = str(exc)
    in_key = re.fullmatch(r"(.*) - at `key` in `\$\.?(.*)`", text, re.S)  # a dict's key is wrong
    if in_key:
        message, key = f"a key: {in_key[1][:1].lower()}{in_key[1][1:]}", in_key[2]
    else:
        message, _, where = text.partition(" - at `$")
        key = where.rstrip("`").lstrip(".")
    unknown = re.match(r"Object contains unknown field `(.+)`", message)
    if unknown:
        key = f"{key}.{unknown.group(1)}" if key else unknown.group(1)
        message = "unknown key"
    elif message.startswith("Object missing required field"):
        field = message.rsplit("`", 2)[-2]
        key = f"{key}.{field}" if key else field
        message = "required key is missing"
    else:
        # "null" is accepted wherever it means "not set": naming it only confuses the reader.
        message = (message[:1].lower() + message[1:]).replace(" | null`", "`")
    full = ".".join(p for p in (prefix, key) if p)
    return f"`{full}`: {message}" if full else message
