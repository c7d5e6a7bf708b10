"""The hook specifications: the table of contents of the gateway's architecture.

Every feature of the gateway is a plugin: a module (or object) with functions marked
``@respan_gateway.hookimpl``, published by its package under the ``respan_gateway`` entry-point group.
The bundled plugins in ``plugins/`` register exactly that way.

Hooks run once, at start-up, while the app is built. Each receives a ``register`` callback and calls it
for every thing it contributes (zero, one or many). Per request there are no hook calls: the
middleware chain is compiled once and runs as plain ``await``s.

Start-up order (as in pytest/tox): the bundled and installed plugins load from entry points, except
those the config names in ``[plugins] disabled``, which are never imported; then every hook
implementation is checked against these specs, so a misspelt hook fails the start by name.

Services (one plugin offering typed operations to others, without importing it): a plugin declares
nothing here but implements a Protocol declared below, and hands its object to the gateway with
``gateway.provide(Protocol, obj)`` from its middleware factory; a consumer asks for it with
``gateway.service(Protocol)`` from its ``startup()`` on (``None`` when no running plugin provides it,
e.g. the providing plugin is disabled or left out of the pipeline). One provider per Protocol: a
second ``provide`` of the same Protocol fails the start. The services:

- :class:`RequestLogReader`: the log records of the ``request_logs`` store (the ``logging`` plugin),
  read with the logs API's filters; used by the logs API itself and the dashboard.
- :class:`CustomerReader`: the customers of a tenant (the ``limits`` plugin's ``customers`` store),
  their budgets and usage totals, read-only; used by the users API and the dashboard.
- :class:`ApiKeyDirectory`: the gateway API keys of a tenant (the ``auth`` plugin: ``[auth] keys`` and
  the ``api_keys`` store), listed without their secrets; database keys may be created and revoked.
  Used by the dashboard.
- :class:`CacheStats`: what the response cache holds for a tenant now (the ``cache`` plugin). Used by
  the dashboard.
- :class:`PromptCatalog`: the managed prompts of a tenant, their versions and the deployed one (the
  ``prompts`` plugin), read-only; for the dashboard.

"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import msgspec
import pluggy

if TYPE_CHECKING:
    from .call import Call
    from .providers import ProviderAdapter
    from .endpoints import Endpoint

hookspec = pluggy.HookspecMarker("respan_gateway")
hookimpl = pluggy.HookimplMarker("respan_gateway")


class RegisterMiddleware(Protocol):
    def __call__(
        self, name: str, factory: Any, *, order: int, settings: type | None = None, requires: tuple[str, ...] = ()
    ) -> None:
        """Contribute a pipeline middleware.

        ``name``: the middleware's name in ``[plugins] pipeline`` and the name of its config section.
        ``factory(settings, gateway)``: called once per process; returns the middleware, an object
        with ``async def __call__(call, call_next) -> Result``, and optionally ``async def startup()``,
        ``async def shutdown()`` and ``async def ready() -> bool`` (for ``/readyz``). It may return
        None: the plugin does not run with this config (``tracing`` without an endpoint), and is left
        out of the chain, at no cost per request (so may an observer or a component factory).
        ``order``: the default position when the config gives no ``pipeline`` (lower runs first;
        bundled: metrics 50, auth 100, logging 150, params 200, request_breakdown 250, limits 400, prompts 500,
        cache 600, routing 700, reliability 800, deployments 850, credentials 900).
        ``settings``: a ``respan_gateway.Settings`` subclass; the ``[name]`` section is decoded into it.
        ``requires``: names of middlewares or observers that must run too (``deployments`` requires
        ``routing``); a missing one stops the start, naming both.
        """


class Observer(Protocol):
    """What an observer factory returns (it may also have ``startup``/``shutdown``/``ready``, as a middleware)."""

    def observe(self, call: Call) -> None:
        """Called once per call, after the answer was sent or the stream ended (complete, errored, cut,
        or left by the client), with ``call.outcome`` complete (``Gateway.settle``: who answered, the
        durations, the usage, read from the answer or estimated, and the cost). Synchronous and quick:
        queue any I/O. Metrics go in the gateway's registry (``gateway.metrics``), added at start-up."""


class RegisterObserver(Protocol):
    def __call__(
        self, name: str, factory: Callable[[Any, Any], Observer], *, settings: type | None = None,
        requires: tuple[str, ...] = (), needs_answer: bool = False,
    ) -> None:
        """Contribute an observer of finished calls (log records, metrics, settling budgets...).

        ``name``: its name in ``[plugins] observers`` (default: every registered one, in registration
        order) and of its config section. ``factory(settings, gateway)`` is called once per process.
        ``needs_answer``: the observer reads ``call.outcome.answer``; only then does the core assemble a
        streamed answer (through the endpoint's accumulator), so observers that need no content cost
        nothing per chunk.
        """


class RegisterComponent(Protocol):
    def __call__(self, name: str, factory: Callable[[Any, Any], Any], *, settings: type | None = None,
                 requires: tuple[str, ...] = ()) -> None:
        """Contribute a component: per-process state of a plugin that is not in the request path (the
        dashboard's sessions and templates). ``factory(settings, gateway)`` is called once per process
        with the ``[name]`` section decoded into ``settings``; the object may have ``startup``,
        ``shutdown`` and ``ready`` as a middleware; the plugin's routes find it in
        ``gateway.components``. Nothing of it runs per request unless a route calls it."""


class RegisterEndpoint(Protocol):
    def __call__(self, endpoint: Endpoint) -> None:
        """Declare a pipeline endpoint (a ``respan_gateway.Endpoint``: its kind, paths, request envelope
        and error style). The core serves it: builds the call, runs the pipeline, sends the answer in
        the endpoint's style, completes the outcome and calls the observers. A path declared twice (or
        also registered as a route) stops the start, naming both plugins."""


class RegisterProvider(Protocol):
    def __call__(self, type_name: str, adapter: type[ProviderAdapter]) -> None:
        """Contribute a provider adapter class (a ``respan_gateway.ProviderAdapter`` subclass).

        ``type_name`` is what a ``[providers.<id>]`` table names in ``type`` (or, by default, its id).
        A later registration of the same type name replaces an earlier one, so a third-party package
        can replace a bundled adapter.
        """


class RegisterRoute(Protocol):
    def __call__(self, path: str, endpoint: Any, *, methods: list[str]) -> None:
        """Contribute an HTTP route: ``async def endpoint(request) -> starlette Response``.

        The gateway is ``request.app.state.gateway``; ``await gateway.authenticate(request.headers)``
        gives the caller's principal. Raise ``respan_gateway.errors.GatewayError`` for errors.
        """


class RegisterStore(Protocol):
    def __call__(self, name: str, migrations: list[Any]) -> None:
        """Declare the tables a plugin keeps in the gateway's database.

        ``name``: the store's name (e.g. ``"request_logs"``); its schema version is remembered under it.
        ``migrations``: ordered ``respan_gateway.database.Migration(version, sqlite=..., postgres=...)``
        steps; at start-up the ones newer than the stored version are applied, in one transaction.
        The plugin reaches the database through ``gateway.database`` (a ``Database``, or None when no
        plugin registered a store), from its ``startup()`` on.
        """


class RegisterCommand(Protocol):
    def __call__(self, name: str, run: Callable[[argparse.Namespace, Any], Awaitable[int | None]], *, help: str,
                 arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
        """Contribute a subcommand of the ``respan-gateway`` CLI (``respan-gateway keys ...``).

        ``name``: the subcommand; ``help``: its line in ``--help``. ``arguments(parser)`` adds its
        arguments (and sub-subcommands) to its ``argparse`` parser; every plugin command also gets
        ``--config FILE``. ``run(args, gateway)``: the command, awaited with the parsed arguments and
        the :class:`~respan_gateway.Gateway` built from that config (its middlewares, components and
        ``gateway.database`` constructed, the database started; nothing serves requests, no other
        ``startup()`` runs); it returns the exit code (None = 0) and prints what the user reads. A
        plugin blocked in the config contributes no command; a name taken by the core or another
        plugin stops the CLI, naming both.
        """


@hookspec
def register_middlewares(register: RegisterMiddleware) -> None:
    """Called once at start-up to collect pipeline middlewares (auth, params, logging, cache...)."""


@hookspec
def register_observers(register: RegisterObserver) -> None:
    """Called once at start-up to collect observers of finished calls (logging, metrics...)."""


@hookspec
def register_components(register: RegisterComponent) -> None:
    """Called once at start-up to collect components: a plugin's per-process state with a config section."""


@hookspec
def register_endpoints(register: RegisterEndpoint) -> None:
    """Called once at start-up to collect pipeline endpoints (the core declares chat and embeddings)."""


@hookspec
def register_providers(register: RegisterProvider) -> None:
    """Called once at start-up to collect provider adapter classes (openai, anthropic, mock...)."""


@hookspec
def register_routes(register: RegisterRoute) -> None:
    """Called once at start-up to collect extra HTTP routes (logs API, prompts API...).

    The core bounds every such route's request body (``[server] max_body_bytes``, larger is a 413
    in the OpenAI error envelope) before the endpoint runs: ``await request.body()`` is safe.
    """


@hookspec
def register_stores(register: RegisterStore) -> None:
    """Called once at start-up to collect the database schemas of plugins (log records, prompts...).

    Every store lives in the one database of ``[database]`` (SQLite file or PostgreSQL), opened once
    per process before the middlewares' ``startup()`` and closed after their ``shutdown()``.
    """


@hookspec
def register_commands(register: RegisterCommand) -> None:
    """Called once when the CLI runs a command it does not know itself, to collect the plugins' CLI
    subcommands (the auth plugin's ``keys``, the prompts plugin's ``prompts check``). The gateway is built from the command's ``--config``
    first, so the plugins are those the config loads."""


# -- services -----------------------------------------------------------------------------------------

class LogQuery(msgspec.Struct, kw_only=True):
    """Which log records to read: the logs API's filters, time range, order and page.

    ``filters``: ``(field, operator, value)`` triples; a field is a record column (``model``,
    ``status_code``, ``customer_identifier``...), an alias of the logs API (``provider``, ``ttft``,
    ``all_tokens``) or ``metadata__<key>``; operators as in the logs API ("" = equals, ``gte``,
    ``icontains``, ``in``...; ``value`` a list for ``in``). ``connector`` joins them (AND or OR).
    ``start_time``/``end_time``: epoch seconds, inclusive. ``sort_by``: a column, ``-`` for descending.
    """

    filters: list[tuple[str, str, Any]] = []
    connector: str = "AND"
    start_time: float | None = None
    end_time: float | None = None
    sort_by: str = "-start_time"
    page: int = 1
    page_size: int = 100


class UsageBucket(msgspec.Struct, kw_only=True, frozen=True):
    """Aggregates of the records of one time bucket (and one group, when grouped).

    ``bucket``: the bucket's start, epoch seconds (UTC hours or days; 0 when not bucketed).
    ``group``: the model, provider, customer or key id (``""`` for records without one; ``""`` when not
    grouped). Latency percentiles are nearest-rank over the records with a latency (None if none);
    a reader may answer them from latency histograms instead (the ``logging`` plugin does for the
    ranges its hourly roll-up serves: a value within 5% of the exact one, see its README).
    """

    bucket: float
    group: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float
    cache_hits: int
    p50_latency: float | None
    p95_latency: float | None


UsageGroup = Literal["model", "provider", "customer", "key"]


@runtime_checkable
class RequestLogReader(Protocol):
    """Reads the stored log records of one tenant (provided by the ``logging`` plugin).

    Every method reads what this process has answered so far (queued records are written first) and
    raises ``respan_gateway.BadRequest`` for a bad filter, ``respan_gateway.database.StoreUnavailable``
    when the store cannot be reached.
    """

    async def list(self, tenant: str, query: LogQuery) -> tuple[int, list[dict[str, Any]]]:
        """(count of matching records, the page's records in the logs API's shape)."""

    async def get(self, tenant: str, unique_id: str) -> dict[str, Any] | None:
        """One record in the logs API's shape, or None."""

    async def summary(self, tenant: str, query: LogQuery) -> dict[str, Any]:
        """The logs API's summary (totals of requests, errors, tokens, cost; mean latencies)."""

    async def usage(self, tenant: str, query: LogQuery, *, bucket: Literal["hour", "day"] | None,
                    group_by: UsageGroup | None = None, percentiles: bool = True) -> list[UsageBucket]:
        """Aggregates per time bucket (``None``: the whole range in one) and per group, computed in
        the database (GROUP BY), ordered by bucket then group. ``query``'s paging and order are ignored.
        ``percentiles=False`` leaves the latency percentiles None (they cost a sort; the rest a scan)."""


@runtime_checkable
class CustomerReader(Protocol):
    """Reads the customers of one tenant, with their budgets and usage (provided by the ``limits``
    plugin). A customer is the users API's record: ``customer_identifier``, ``name``, ``email``, the
    budget fields of ``customer_params`` (``period_budget``, ``budget_duration``, ``period_start``,
    ``period_end``, ``total_budget``, ``markup_percentage``, ``rate_limit``), and the usage totals
    (``total_usage``: USD with markup, ``total_cost``: USD at provider prices, ``total_requests``,
    ``total_prompt_tokens``, ``total_completion_tokens``, ``total_period_usage`` in the current
    period). Raises ``respan_gateway.database.StoreUnavailable`` when the store cannot be reached.
    """

    async def get(self, tenant: str, customer_identifier: str) -> dict[str, Any] | None:
        """One customer, or None."""

    async def list(self, tenant: str, *, page: int = 1, page_size: int = 100,
                   sort_by: str = "-last_active_timeframe") -> tuple[int, list[dict[str, Any]]]:
        """(count of the tenant's customers, the page's customers); ``sort_by`` a field of the record,
        ``-`` for descending."""
class PromptVersionInfo(msgspec.Struct, kw_only=True, frozen=True):
    """One version of a managed prompt, as stored: the templates (unrendered) and the settings.

    ``messages``: chat messages whose ``content`` is a Jinja template (a string, or content parts);
    ``instructions``: a template that stands for a leading system message; ``params``: the other
    request fields of the version (``temperature``, ``max_tokens``, ``tools``, Respan params such as
    ``fallback_models``...); ``variables``: default values of template variables.
    """

    version: int
    messages: list[dict[str, Any]] = []
    instructions: str | None = None
    model: str | None = None
    stream: bool = False
    params: dict[str, Any] = {}
    variables: dict[str, Any] = {}
    description: str = ""
    created_at: float | None = None
    deployed: bool = False


class PromptInfo(msgspec.Struct, kw_only=True, frozen=True):
    """A managed prompt: ``source`` ``"file"`` (the prompts folder, read-only) or ``"api"`` (the
    database, managed through ``/api/prompts/``). ``deployed_version``: what a request without a
    ``version`` gets; ``latest_version``: the newest (None when it has no version yet)."""

    prompt_id: str
    name: str
    description: str = ""
    source: Literal["file", "api"] = "api"
    deployed_version: int | None = None
    latest_version: int | None = None
    created_at: float | None = None
    updated_at: float | None = None


@runtime_checkable
class PromptCatalog(Protocol):
    """Reads the managed prompts one tenant may use (provided by the ``prompts`` plugin): the files of
    the prompts folder visible to the tenant, and the tenant's prompts in the database. Raises
    ``respan_gateway.database.StoreUnavailable`` when the database cannot be reached."""

    async def list_prompts(self, tenant: str) -> list[PromptInfo]:
        """Every prompt of the tenant, ordered by ``prompt_id``."""

    async def versions(self, tenant: str, prompt_id: str) -> list[PromptVersionInfo] | None:
        """The prompt's versions, oldest first (``deployed`` marks the live one); None: no such prompt."""


@runtime_checkable
class ApiKeyDirectory(Protocol):
    """The gateway API keys of one tenant (provided by the ``auth`` plugin), never their secrets.

    A key is the keys API's record (``id``, ``prefix``, ``name``, ``tenant``, ``environment``, ``admin``,
    ``limits``: every ``KeyLimits`` field, None where unset, ``created_at``, ``expires_at``,
    ``revoked_at``: ISO 8601 or None, ``status``: ``active``, ``expired`` or ``revoked``) and its
    ``source``: ``config`` (``[auth] keys``: read-only, no prefix, no creation time) or ``database``
    (the ``api_keys`` store). Raises ``respan_gateway.database.StoreUnavailable`` when the store
    cannot be reached.
    """

    async def list(self, tenant: str, *, include_revoked: bool = False) -> list[dict[str, Any]]:
        """The config keys, then the database keys newest first (revoked ones only when asked)."""

    async def create(self, tenant: str, *, name: str, environment: Literal["production", "test"] = "production",
                     expires_at: float | None = None, by: str | None = None) -> tuple[dict[str, Any], str]:
        """A new non-admin database key without limits: (its record, the full key, shown this once).
        ``expires_at`` epoch seconds, in the future; ``by``: who asked (logged). ``BadRequest`` for a
        bad name or expiry."""

    async def revoke(self, tenant: str, key_id: str, *, by: str | None = None) -> dict[str, Any] | None:
        """Revoke the tenant's database key ``key_id`` (again: no change); its record, or None when the
        tenant has no database key of that id."""


@runtime_checkable
class CacheStats(Protocol):
    """What the response cache holds now (provided by the ``cache`` plugin)."""

    async def stats(self, tenant: str) -> dict[str, Any]:
        """``backend`` (``memory`` or ``redis``), ``entries``: the tenant's stored entries (None when the
        backend does not count them cheaply: Redis), ``default_ttl`` (seconds)."""
