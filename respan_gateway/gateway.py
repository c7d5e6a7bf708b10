"""The gateway of one process: plugins loaded, providers built, the middleware chain compiled.

:meth:`Gateway.build` does all the start-up work and fails by name on a broken plugin or config.
Per request, :meth:`Gateway.handle` runs the compiled chain; its last stage resolves the target (when
routing did not) and calls the provider adapter.
"""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import msgspec
import pluggy
import structlog

from . import hookspecs
from .call import ANONYMOUS, Attempt, Call, CallNext, Chunk, JSONResult, Principal, Result, StreamResult, Target, aclose
from .config import Config, ConfigError, Settings
from .cost import cost as price
from .cost import usage_from
from .database import Database, Migration
from .endpoints import Endpoint
from .errors import BadRequest, GatewayError, Overloaded
from .log import add_secrets
from .model_catalog import available_models
from .params import request_secrets, strip_params
from .openai_chat import ChatAccumulator, check_not_empty
from .openai_chat import cacheable as chat_cacheable
from .openai_chat import replay as chat_replay
from .openai_chat import ChatContinuation, chat_first_token
from .metrics import Registry
from .providers import AdapterContext, Catalog, ProviderAdapter, forbidden_headers
from .state import SharedState
from .tokens import estimate
from .upstream import UpstreamClient, create_client

ENTRY_POINT_GROUP = "respan_gateway"
T = TypeVar("T")
_encode = msgspec.json.Encoder().encode
#: The plugin name the core's own contributions (chat and embeddings endpoints, core routes) go under.
CORE = "respan_gateway"

log = structlog.get_logger("respan_gateway")


class NoSettings(Settings):
    """For middlewares without settings: their section, if present, must be empty."""


class MiddlewareRegistration:
    __slots__ = ("name", "factory", "order", "settings", "plugin", "requires")

    def __init__(self, name: str, factory: Any, order: int, settings: type | None, plugin: str,
                 requires: tuple[str, ...] = ()) -> None:
        self.name, self.factory, self.order, self.settings, self.plugin = name, factory, order, settings, plugin
        self.requires = tuple(requires)


class ObserverRegistration:
    __slots__ = ("name", "factory", "settings", "plugin", "requires", "needs_answer")

    def __init__(self, name: str, factory: Callable[[Any, Gateway], hookspecs.Observer], settings: type | None,
                 plugin: str, requires: tuple[str, ...], needs_answer: bool) -> None:
        self.name, self.factory, self.settings, self.plugin = name, factory, settings, plugin
        self.requires, self.needs_answer = tuple(requires), needs_answer


class CommandRegistration:
    """A CLI subcommand a plugin contributes (``register_commands``); run by ``respan_gateway.cli``."""

    __slots__ = ("name", "run", "help", "arguments", "plugin")

    def __init__(self, name: str, run: Any, help: str, arguments: Any, plugin: str) -> None:
        self.name, self.run, self.help, self.arguments, self.plugin = name, run, help, arguments, plugin


def core_endpoints() -> list[Endpoint]:
    """The endpoints the core serves itself; plugins declare theirs through ``register_endpoints``."""
    return [
        Endpoint(kind="chat", paths=("/api/chat/completions", "/api/v1/chat/completions", "/v1/chat/completions"),
                 accumulator=ChatAccumulator, replay=chat_replay, cacheable=chat_cacheable,
                 first_token=chat_first_token, continuation=ChatContinuation),
        Endpoint(kind="embeddings", paths=("/api/embeddings", "/api/v1/embeddings", "/v1/embeddings"),
                 max_tokens_fields=()),
    ]


class Gateway:
    """Everything a process shares between requests. Plugins receive it in their factories."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.providers: dict[str, ProviderAdapter] = {}
        self.adapter_types: dict[str, type[ProviderAdapter]] = {}
        self.middlewares: list[tuple[str, Any]] = []
        # Observers of finished calls, in registration order; `needs_answer`: some observer reads the answer.
        self.observers: list[tuple[str, hookspecs.Observer]] = []
        # Plugins' per-process state outside the request path (register_components), by name.
        self.components: list[tuple[str, Any]] = []
        self._component_registrations: dict[str, ObserverRegistration] = {}
        self.needs_answer = False
        self.endpoints: list[Endpoint] = []
        # kind -> how a chat-only adapter serves it (Endpoint.via_chat).
        self._via_chat: dict[str, Any] = {}
        # Which plugin contributed each path (endpoints and routes): a path registered twice fails the start.
        self.path_owners: dict[str, str] = {}
        self._styles: dict[str, str] = {}
        self.routes: list[tuple[str, Any, list[str]]] = []
        # The process's metrics: plugins add their series at start-up (respan_gateway.metrics).
        self.metrics = Registry()
        # Database schemas declared by plugins (register_stores); the database opens only if there are some.
        self.stores: dict[str, list[Migration]] = {}
        # CLI subcommands of plugins (register_commands), by name.
        self.commands: dict[str, CommandRegistration] = {}
        self.database: Database | None = None
        # The one Redis client of the process ([state] redis_url), shared by the plugins that keep
        # state across replicas (respan_gateway.state); not shared when unset (the embedded default).
        try:
            self.state = SharedState(config.state)
        except ValueError as exc:
            raise ConfigError(f"{config.source}: {exc}") from None
        add_secrets(self.state.secrets())
        self.catalog: Catalog = Catalog({}, {})
        self._http: UpstreamClient | None = None
        self._authenticator: Any = None
        self._services: dict[type, Any] = {}
        self.handle: CallNext = self.dispatch

    # -- start-up ---------------------------------------------------------------------------------
    @classmethod
    def build(cls, config: Config, plugins: Iterable[Any] = (), *, replaces: Gateway | None = None) -> Gateway:
        """Load plugins (blocked ones never imported), validate, and compile the pipeline.

        ``plugins``: extra plugin objects to register, as a test registers a plugin it defines.
        ``replaces``: the gateway this one takes over from (a config reload): its metrics carry over.
        """
        gw = cls(config)
        if replaces is not None:
            gw.metrics = Registry(previous=replaces.metrics)
        gw._load_plugins(plugins)
        registrations, observers = gw._collect()
        components = gw._component_registrations
        config.check_sections({r.name for r in registrations.values()} | {o.name for o in observers.values()} | set(components))
        gw._build_providers()
        gw._build_pipeline(registrations)
        gw._build_observers(observers)
        gw._build_components(components)
        gw._check_requirements(registrations, {**observers, **components})
        return gw

    def _load_plugins(self, extra: Iterable[Any]) -> None:
        for name in self.config.plugins.disabled:
            self.pm.set_blocked(name)
        for obj in extra:
            name = getattr(obj, "__name__", None) or type(obj).__name__
            if not self.pm.is_blocked(name):
                self.pm.register(obj, name=name)
        # Bundled plugins first, so that an installed package registering the same provider type wins.
        eps = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: _dist_name(ep) != "respan-gateway")
        for ep in eps:
            if self.pm.is_blocked(ep.name) or self.pm.get_plugin(ep.name) is not None:
                continue
            try:
                self.pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=ep.name)
            except Exception as exc:  # a broken plugin package stops the start, by name
                raise ConfigError(f"plugin `{ep.name}` ({ep.value}) failed to load: {type(exc).__name__}: {exc}") from exc
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise ConfigError(f"plugin `{self.pm.get_name(exc.plugin)}`: {exc}") from exc

    def _collect(self) -> tuple[dict[str, MiddlewareRegistration], dict[str, ObserverRegistration]]:
        registrations: dict[str, MiddlewareRegistration] = {}
        observers: dict[str, ObserverRegistration] = {}
        components = self._component_registrations
        plugin_of: dict[str, str] = {}

        for impl in self.pm.hook.register_middlewares.get_hookimpls():
            plugin = impl.plugin_name

            def add_middleware(name: str, factory: Any, *, order: int, settings: type | None = None,
                               requires: tuple[str, ...] = (), _p: str = plugin) -> None:
                if name in registrations:
                    raise ConfigError(f"plugin `{_p}` registers middleware `{name}`, already registered by `{registrations[name].plugin}`")
                registrations[name] = MiddlewareRegistration(name, factory, order, settings, _p, requires)

            impl.function(register=add_middleware)

        for impl in self.pm.hook.register_components.get_hookimpls():
            def add_component(name: str, factory: Any, *, settings: type | None = None, requires: tuple[str, ...] = (),
                              _p: str = impl.plugin_name) -> None:
                other = components.get(name) or registrations.get(name)
                if other is not None:
                    raise ConfigError(f"plugin `{_p}` registers component `{name}`, a name already registered by `{other.plugin}`")
                components[name] = ObserverRegistration(name, factory, settings, _p, requires, False)

            impl.function(register=add_component)

        for impl in self.pm.hook.register_observers.get_hookimpls():
            def add_observer(name: str, factory: Callable[[Any, Gateway], hookspecs.Observer], *, settings: type | None = None, requires: tuple[str, ...] = (),
                             needs_answer: bool = False, _p: str = impl.plugin_name) -> None:
                other = observers.get(name) or registrations.get(name)
                if other is not None and other.plugin != _p:
                    raise ConfigError(f"plugin `{_p}` registers observer `{name}`, a name already registered by `{other.plugin}`")
                if name in observers:
                    raise ConfigError(f"plugin `{_p}` registers observer `{name}` twice")
                observers[name] = ObserverRegistration(name, factory, settings, _p, requires, needs_answer)

            impl.function(register=add_observer)

        for endpoint in core_endpoints():
            self._add_endpoint(endpoint, CORE)
        for impl in self.pm.hook.register_endpoints.get_hookimpls():
            def add_endpoint(endpoint: Endpoint, _p: str = impl.plugin_name) -> None:
                if not isinstance(endpoint, Endpoint):
                    raise ConfigError(f"plugin `{_p}`: register_endpoints takes a respan_gateway.Endpoint, not {type(endpoint).__name__}")
                self._add_endpoint(endpoint, _p)

            impl.function(register=add_endpoint)

        # get_hookimpls() is in registration order: a later plugin's adapter replaces an earlier one's.
        for impl in self.pm.hook.register_providers.get_hookimpls():
            def add_provider(type_name: str, adapter: type, _p: str = impl.plugin_name) -> None:
                if not (isinstance(adapter, type) and issubclass(adapter, ProviderAdapter)):
                    raise ConfigError(f"plugin `{_p}`: provider `{type_name}` is not a ProviderAdapter subclass")
                self.adapter_types[type_name] = adapter
                plugin_of[type_name] = _p

            impl.function(register=add_provider)

        for impl in self.pm.hook.register_routes.get_hookimpls():
            def add_route(path: str, endpoint: Any, *, methods: list[str], _p: str = impl.plugin_name) -> None:
                self._claim(path, _p)
                self.routes.append((path, endpoint, methods))

            impl.function(register=add_route)

        for impl in self.pm.hook.register_stores.get_hookimpls():
            def add_store(name: str, migrations: list[Migration], _p: str = impl.plugin_name) -> None:
                if name in self.stores:
                    raise ConfigError(f"plugin `{_p}` registers store `{name}`, already registered")
                self.stores[name] = list(migrations)

            impl.function(register=add_store)
        for impl in self.pm.hook.register_commands.get_hookimpls():
            def add_command(name: str, run: Any, *, help: str, arguments: Any = None, _p: str = impl.plugin_name) -> None:
                if name in self.commands:
                    raise ConfigError(f"plugin `{_p}` registers the command `{name}`, already registered by `{self.commands[name].plugin}`")
                self.commands[name] = CommandRegistration(name, run, help, arguments, _p)

            impl.function(register=add_command)
        if self.stores:
            try:
                self.database = Database(self.config.database, self.stores)
            except ValueError as exc:
                raise ConfigError(f"{self.config.source}: {exc}") from None
        return registrations, observers

    def _claim(self, path: str, plugin: str) -> None:
        owner = self.path_owners.get(path)
        if owner is not None:
            raise ConfigError(f"plugin `{plugin}` registers the path {path}, already registered by `{owner}`")
        self.path_owners[path] = plugin

    def _add_endpoint(self, endpoint: Endpoint, plugin: str) -> None:
        for path in endpoint.paths:
            self._claim(path, plugin)
            if endpoint.style != "openai":  # errors under its folder (a 404, a 405) take its style too
                self._styles["/".join(path.split("/")[:3]) + "/"] = endpoint.style
        if endpoint.via_chat is not None:
            self._via_chat[endpoint.kind] = endpoint.via_chat
        self.endpoints.append(endpoint)

    def endpoint_for(self, kind: str) -> Endpoint | None:
        """The declared endpoint of calls of ``kind`` (its accumulator, its stream framing), or None."""
        return next((e for e in self.endpoints if e.kind == kind), None)

    def style_for(self, path: str) -> str:
        """The error style of a path: that of the declared endpoint whose folder it is under, else OpenAI's."""
        for prefix, style in self._styles.items():
            if path.startswith(prefix):
                return style
        return "openai"

    def _build_providers(self) -> None:
        # No client sets any registered provider's credential header, whichever provider a call goes to.
        context = AdapterContext(self.config.upstream, lambda: self.http, forbidden_headers(self.adapter_types.values()))
        for pid, table in self.config.providers_raw.items():
            type_name = table.get("type") or pid
            adapter_cls = self.adapter_types.get(type_name)
            if adapter_cls is None:
                known = ", ".join(sorted(self.adapter_types)) or "none loaded"
                raise ConfigError(
                    f"{self.config.source}: `providers.{pid}.type`: no provider adapter `{type_name}` (known: {known})"
                )
            settings = self.config.provider_settings(pid, adapter_cls.Settings)
            self.providers[pid] = adapter_cls(pid, settings, context)
            add_secrets(self.providers[pid].configured_secrets())
        # The shipped catalog's entries of configured provider types, under the config's own.
        self.catalog = Catalog(available_models(self.config.models, self.providers), self.providers)
        self.catalog.check(self.config.source)

    def _build_pipeline(self, registrations: dict[str, MiddlewareRegistration]) -> None:
        names = self.config.plugins.pipeline or sorted(registrations, key=lambda n: registrations[n].order)
        for name in names:
            reg = registrations.get(name)
            if reg is None:
                raise ConfigError(f"{self.config.source}: `plugins.pipeline`: no loaded plugin provides middleware `{name}`")
            middleware = self._make("middleware", name, reg.factory, reg.settings, reg.plugin)
            if middleware is not None:  # None: the plugin does not run with this config (hookspecs)
                self.middlewares.append((name, middleware))
        handler: CallNext = self.dispatch
        for _, middleware in reversed(self.middlewares):
            handler = _link(middleware, handler)
        self.handle = handler

    def _make(self, what: str, name: str, factory: Any, settings_type: type | None, plugin: str) -> Any:
        """``factory(settings, gateway)`` with the ``[name]`` section; a failure stops the start, by name."""
        settings = self.config.section(name, settings_type or NoSettings)
        try:
            return factory(settings, self)
        except (GatewayError, ConfigError):
            raise
        except Exception as exc:
            raise ConfigError(f"{what} `{name}` (plugin `{plugin}`) failed to start: {type(exc).__name__}: {exc}") from exc

    def _build_observers(self, registrations: dict[str, ObserverRegistration]) -> None:
        names = self.config.plugins.observers or list(registrations)
        for name in names:
            reg = registrations.get(name)
            if reg is None:
                known = ", ".join(registrations) or "none"
                raise ConfigError(f"{self.config.source}: `plugins.observers`: no loaded plugin provides observer `{name}` (known: {known})")
            observer = self._make("observer", reg.name, reg.factory, reg.settings, reg.plugin)
            if observer is None:
                continue
            if not callable(getattr(observer, "observe", None)):
                raise ConfigError(f"observer `{reg.name}` (plugin `{reg.plugin}`) has no observe(call) method")
            self.observers.append((reg.name, observer))
            self.needs_answer = self.needs_answer or reg.needs_answer

    def _build_components(self, registrations: dict[str, ObserverRegistration]) -> None:
        for reg in registrations.values():
            component = self._make("component", reg.name, reg.factory, reg.settings, reg.plugin)
            if component is not None:
                self.components.append((reg.name, component))

    def _check_requirements(self, middlewares: dict[str, MiddlewareRegistration],
                            observers: dict[str, ObserverRegistration]) -> None:
        """A declared requirement that is not running stops the start, naming both."""
        running = {name for name, _ in [*self.middlewares, *self.observers, *self.components]}
        for reg in [*(middlewares[name] for name, _ in self.middlewares), *(observers[name] for name in running if name in observers)]:
            for needed in reg.requires:
                if needed not in running:
                    why = "is disabled or not installed" if needed not in middlewares and needed not in observers \
                        else "is not in `plugins.pipeline`" if needed in middlewares else "is not in `plugins.observers`"
                    raise ConfigError(
                        f"{self.config.source}: `{reg.name}` (plugin `{reg.plugin}`) requires `{needed}`, which {why}"
                    )

    # -- services for plugins ---------------------------------------------------------------------
    @property
    def http(self) -> UpstreamClient:
        """The process's upstream client (``send(method, url, headers, body, timeout)``, see
        :mod:`respan_gateway.upstream`), for adapters and for a plugin's own outgoing calls (webhooks)."""
        if self._http is None:
            raise RuntimeError("the upstream client exists only while the app runs (inside its lifespan)")
        return self._http

    def set_authenticator(self, authenticator: Any) -> None:
        """Install ``async authenticator(headers) -> Principal`` (the auth plugin does, at start-up)."""
        self._authenticator = authenticator

    async def authenticate(self, headers: Any) -> Principal:
        """The caller's principal; anonymous (tenant ``default``) when no auth plugin is loaded."""
        if self._authenticator is None:
            return ANONYMOUS
        return await self._authenticator(headers)

    def provide(self, protocol: type[T], implementation: T) -> None:
        """Offer ``implementation`` to other plugins as the ``protocol`` service (hookspecs.py, Services)."""
        if protocol in self._services:
            raise ConfigError(f"two plugins provide the service `{protocol.__name__}`: only one may")
        if getattr(protocol, "_is_runtime_protocol", False) and not isinstance(implementation, protocol):
            raise ConfigError(f"{type(implementation).__name__} does not implement `{protocol.__name__}`")
        self._services[protocol] = implementation

    def service(self, protocol: type[T]) -> T | None:
        """The running plugin's implementation of ``protocol``, or None when no plugin provides it."""
        return self._services.get(protocol)

    def plugin_info(self) -> list[dict[str, Any]]:
        info = []
        dist = {id(p): d for p, d in self.pm.list_plugin_distinfo()}
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                continue
            d = dist.get(id(plugin))
            info.append({
                "name": name,
                "package": d.project_name if d else None,
                "version": d.version if d else None,
                "hooks": sorted(h.name for h in self.pm.get_hookcallers(plugin) or []),
            })
        return info

    # -- life cycle -------------------------------------------------------------------------------
    async def startup(self) -> None:
        self._http = create_client(self.config.upstream)
        if self.database is not None:
            await self.database.start()
        await self.state.start()
        for component in self._components():
            if hasattr(component, "startup"):
                await component.startup()

    async def shutdown(self) -> None:
        for component in reversed(self._components()):
            if hasattr(component, "shutdown"):
                await component.shutdown()
        await self.state.close()
        if self.database is not None:
            await self.database.close()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    #: Checks ``/readyz`` reports without failing on them: Redis is shared by every replica, so a
    #: Redis outage failing readiness would take every replica out of the load balancer at once, while
    #: each still answers (the cache degrades to no cache; budgets refuse with 503, their own choice).
    ADVISORY_CHECKS = frozenset({"redis"})

    async def ready(self) -> dict[str, bool]:
        """Each check of ``/readyz``: the database (when a plugin keeps a store), Redis (when
        ``[state] redis_url`` is set; see :attr:`ADVISORY_CHECKS`) and each component's ``ready()``."""
        checks = {}
        if self.database is not None:
            checks["database"] = await self.database.ping()
        if self.state.shared:
            checks["redis"] = await self.state.ping()
        for name, component in [*self.middlewares, *self.observers, *self.components, *self.providers.items()]:
            if hasattr(component, "ready"):
                try:
                    checks[name] = bool(await component.ready())
                except Exception:
                    checks[name] = False
        return checks

    def _components(self) -> list[Any]:
        return [m for _, m in [*self.middlewares, *self.observers, *self.components]] + list(self.providers.values())

    # -- the end of a call ------------------------------------------------------------------------
    def finish(self, call: Call) -> None:
        """Complete ``call.outcome`` and tell every observer, once per call (the endpoint calls this
        when the answer has been sent or the stream has ended)."""
        outcome = call.outcome
        if outcome.ended is None:
            outcome.ended = time.perf_counter()
        for release in call.on_finish:
            try:
                release()
            except Exception:
                log.exception("on_finish_failed", request_id=call.request_id)
        answered = outcome.stream_end is not None or outcome.status < 400  # a stream's part counts
        self.settle(call, outcome.answer if answered else None)
        if outcome.status >= 500 and not isinstance(outcome.error, Overloaded):  # the operator's side of a failure (upstream down, a bug); no secret:
            # the error is redacted (dispatch), and the process log redacts what it knows besides.
            log.warning("request_failed", request_id=call.request_id, status=outcome.status, endpoint=call.kind,
                        model=outcome.model, provider=outcome.provider,
                        error=outcome.error.message if outcome.error is not None else None)
        for name, observer in self.observers:
            try:
                observer.observe(call)
            except Exception:  # one observer's failure must not fail the call or the others
                log.exception("observer_failed", observer=name, request_id=call.request_id)

    def settle(self, call: Call, answer: Any = None) -> None:
        """Who answered, the durations, the usage and the cost of ``call.outcome``: the one computation
        that log records, metrics and ``request_breakdown`` share (``finish`` runs it; a stage that
        shows them before the answer is sent runs it too, and the result is the same).

        ``answer``: what was answered, in the endpoint's shape (None when nothing was). When the
        provider adapter reported no usage, the answer's ``usage`` is read; when it has none either
        (or the stream was cut before it), the tokens are estimated (``usage.estimated``)."""
        outcome, timings = call.outcome, call.timings
        if outcome.cache_hit:
            outcome.model, outcome.provider, outcome.deployment = "respan/cache", None, None
        else:
            ok = next((a for a in reversed(call.attempts) if a.error is None and (a.status or 200) < 400), None)
            last = ok or (call.attempts[-1] if call.attempts else None)
            if last is not None:
                outcome.model, outcome.provider, outcome.deployment = last.model, last.provider, last.deployment
            elif call.target is not None:
                outcome.model, outcome.provider, outcome.deployment = call.target.model, call.target.provider, call.target.deployment
            else:
                outcome.model = call.model
        now = outcome.ended if outcome.ended is not None else time.perf_counter()
        outcome.latency = now - timings.start
        upstream = sum(a.duration for a in call.attempts)
        outcome.overhead = max(0.0, ((timings.answered if timings.answered is not None else now) - timings.start) - upstream)
        if timings.first_byte is not None:
            outcome.time_to_first_token = timings.first_byte - timings.start
        if timings.upstream_start is not None:
            outcome.routing_time = max(0.0, timings.upstream_start - timings.start)
        if outcome.usage is None and answer is not None:
            reported = usage_from(answer.get("usage")) if isinstance(answer, dict) else None
            outcome.usage = reported or estimate(call.prompt(), answer)
        if outcome.usage is not None and not outcome.cache_hit:
            p = call.params
            entry = self.catalog.entry(outcome.model) if outcome.model else None
            outcome.cost = price(entry, outcome.usage, prompt_unit_price=p.prompt_unit_price,
                                 completion_unit_price=p.completion_unit_price)

    # -- the terminal stage -----------------------------------------------------------------------
    async def dispatch(self, call: Call) -> Result:
        """Resolve the target when no stage did, then run one upstream attempt and record it."""
        if call.rejection is not None:
            raise call.rejection
        if not call.params_collected:  # no params stage ran: no Respan param may reach a provider
            strip_params(call)
        if call.kind == "chat":
            check_not_empty(call.body.get("messages"))
        target = call.target
        if target is None:
            if not call.model:
                raise BadRequest("the request has no `model`: name one (or a load_balance_group)", param="model")
            target = self.catalog.resolve(call.model, call.params.route_provider_override)
            call.target = target
        adapter = self.providers.get(target.provider)
        if adapter is None:
            raise BadRequest(f"provider `{target.provider}` is not configured", param="model")
        handler = getattr(adapter, call.kind, None)
        if handler is None:
            translation = self._via_chat.get(call.kind)
            chat = getattr(adapter, "chat", None)
            if translation is None or chat is None:
                raise BadRequest(f"provider `{target.provider}` does not serve this endpoint", param="model")
            handler = _via_chat(chat, translation)
        started = time.perf_counter()
        if call.timings.upstream_start is None:
            call.timings.upstream_start = started
        attempt = Attempt(model=target.model, provider=target.provider, deployment=target.deployment)
        call.attempts.append(attempt)
        try:
            result = await handler(call, target)
        except GatewayError as exc:
            exc.redact(_secrets(adapter, call, target))
            attempt.status, attempt.error = exc.status, exc.message
            raise
        finally:
            attempt.duration = time.perf_counter() - started
        attempt.status = result.status
        if isinstance(result, StreamResult):
            result.chunks = _redacted(result.chunks, adapter, call, target)
        return result


def _via_chat(chat: Callable[[Call, Target], Any], translation: Any) -> Callable[[Call, Target], Any]:
    """An adapter's ``chat`` serving another endpoint through its ``ChatTranslation`` (endpoints.py)."""

    async def handler(call: Call, target: Target) -> Result:
        body = translation.request(call)
        own, changed = call.body, call.body_changed
        call.body, call.body_changed = {k: msgspec.Raw(_encode(v)) for k, v in body.items()}, True
        try:
            result = await chat(call, target)
        finally:
            call.body, call.body_changed = own, changed
        if isinstance(result, StreamResult):
            result.chunks = translation.stream(result.chunks, call)
            return result
        return JSONResult(result.status, data=translation.answer(result.data, call), headers=result.headers)

    return handler


def through_chat(chat: Callable[[Call, Target], Any], translation: Any) -> Callable[[Call, Target], Any]:
    """An adapter's ``chat`` serving another endpoint's call through its ``ChatTranslation``: what the
    core does for an adapter without a method of the call's kind, for an adapter that serves the kind
    natively for some models only (Claude on Vertex) and through chat for the others."""
    return _via_chat(chat, translation)


def _secrets(adapter: ProviderAdapter, call: Call, target: Target) -> tuple[str, ...]:
    """What an error of this attempt must not say: the adapter's secrets and the request's credentials."""
    return (*adapter.secrets(target), *request_secrets(call.params))


async def _redacted(chunks: AsyncIterator[Chunk], adapter: ProviderAdapter, call: Call, target: Target) -> AsyncIterator[Chunk]:
    """The stream, with the secrets taken out of an error raised in its middle (as of any other error)."""
    try:
        async for chunk in chunks:
            yield chunk
    except GatewayError as exc:
        raise exc.redact(_secrets(adapter, call, target))
    finally:
        await aclose(chunks)


def _dist_name(ep: importlib.metadata.EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else ""


def _link(middleware: Any, call_next: CallNext) -> CallNext:
    """``call_next`` of the stage before ``middleware``: a plain function that returns the stage's
    coroutine, awaited by the caller, so that a link adds a call and no coroutine frame of its own."""

    def handler(call: Call) -> Awaitable[Result]:
        return middleware(call, call_next)

    return handler


__all__ = ["Gateway", "JSONResult", "StreamResult", "NoSettings"]
