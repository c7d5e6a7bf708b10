"""The dashboard's routes: sign-in/out, the logs table and a record's detail, usage over time,
customers and a customer's usage, the API keys.

Every page is rendered on the server (Jinja2, autoescaped) and sent with a strict Content-Security-Policy:
scripts and styles only from ``/ui/static/``, no inline script. Every state-changing form (sign-in,
sign-out, creating and revoking a key) carries a CSRF token. Every read and write is scoped to the
signed-in admin's tenant.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.resources
import math
import time
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from respan_gateway import AuthenticationFailed, BadRequest
from respan_gateway.database import StoreUnavailable
from respan_gateway import hookspecs
from respan_gateway.hookspecs import (
    ApiKeyDirectory, CacheStats, CustomerReader, LogQuery, RequestLogReader, UsageBucket,
)
from respan_gateway.timestamps import parse_iso

from .session import LOGIN_COOKIE, SESSION_COOKIE, Session, Sessions

log = structlog.get_logger("respan_gateway.dashboard")

PREFIX = "/ui"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
MAX_FORM_BYTES = 16 * 1024
RANGES = {"24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400, "90d": 90 * 86400}
GROUPS = ("model", "provider", "customer", "key")
CUSTOMER_SORTS = {"-last_active_timeframe": "last active", "-total_usage": "total usage",
                  "-total_requests": "requests", "customer_identifier": "identifier"}


class Section(msgspec.Struct, frozen=True):
    """A page of the nav; shown only while a running plugin provides the service it reads."""

    name: str
    title: str
    path: str
    needs: type


# One line per page: it shows while a running plugin provides its service (hookspecs.py, Services).
SECTIONS = [
    Section("logs", "Logs", f"{PREFIX}/logs", RequestLogReader),
    Section("usage", "Usage", f"{PREFIX}/usage", RequestLogReader),
    Section("customers", "Customers", f"{PREFIX}/customers", CustomerReader),
    Section("keys", "Keys", f"{PREFIX}/keys", ApiKeyDirectory),
]
# The prompts plugin's service, once the core declares it (hookspecs.PromptCatalog: list_prompts, versions).
PROMPT_CATALOG: type | None = getattr(hookspecs, "PromptCatalog", None)
if PROMPT_CATALOG is not None:
    SECTIONS.insert(2, Section("prompts", "Prompts", f"{PREFIX}/prompts", PROMPT_CATALOG))


class Dashboard:
    """The ``dashboard`` pipeline stage: passes every call through; holds the pages' state."""

    def __init__(self, settings: Any, gateway: Any) -> None:
        self.settings = settings
        self.gateway = gateway
        self.sessions = Sessions(settings.secret, settings.session_ttl)
        folder = importlib.resources.files("respan_plugins.dashboard") / "static"
        self.static = {f.name: f.read_bytes() for f in folder.iterdir() if f.name[f.name.rfind("."):] in STATIC_TYPES}

    @functools.cached_property
    def templates(self) -> Any:
        """The pages' Jinja2 environment, built on the first page: a worker nobody browses never loads it."""
        import jinja2

        templates = jinja2.Environment(
            loader=jinja2.PackageLoader("respan_plugins.dashboard", "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        )
        templates.filters.update(pretty=_pretty, when=_when, seconds=_seconds, usd=_usd, segment=_segment)
        return templates

    async def startup(self) -> None:
        if self.gateway.service(RequestLogReader) is None:
            log.warning("dashboard_without_logging",
                        message="the dashboard's logs and usage pages need the logging plugin in the pipeline")

    def sections(self) -> list[Section]:
        return [s for s in SECTIONS if self.gateway.service(s.needs) is not None]

    def render(self, request: Request, template: str, *, status: int = 200, session: Session | None = None,
               **context: Any) -> Response:
        html = self.templates.get_template(template).render(
            prefix=PREFIX, sections=self.sections(), session=session, current=request.url.path, **context)
        return Response(html, status_code=status, media_type="text/html", headers=SECURITY_HEADERS)

    def secure(self, request: Request) -> bool:
        return self.settings.secure_cookie if self.settings.secure_cookie is not None else request.url.scheme == "https"


# -- helpers ------------------------------------------------------------------------------------------

def _dashboard(request: Request) -> Dashboard | None:
    return dict(request.app.state.gateway.components).get("dashboard")


def _not_running() -> Response:
    return Response("the dashboard is not in the pipeline ([plugins] pipeline)", status_code=404,
                    media_type="text/plain", headers=SECURITY_HEADERS)


def _redirect(url: str) -> RedirectResponse:
    response = RedirectResponse(url, status_code=303)
    response.headers.update(SECURITY_HEADERS)
    return response


def _safe_next(value: str | None) -> str:
    """Only a path of the dashboard itself (no open redirect to another site)."""
    if value and value.startswith(f"{PREFIX}/") and not value.startswith("//") and "\\" not in value:
        return value
    return f"{PREFIX}/"


async def _form(request: Request) -> dict[str, str]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise BadRequest("the form is too large")
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}


def _signed_in(request: Request) -> tuple[Dashboard | None, Session | None, Response | None]:
    """(dashboard, session, None), or a response: 404 when not running, a redirect to sign-in."""
    dash = _dashboard(request)
    if dash is None:
        return None, None, _not_running()
    session = dash.sessions.load(request.cookies.get(SESSION_COOKIE))
    if session is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return dash, None, _redirect(f"{PREFIX}/login?{urlencode({'next': target})}")
    return dash, session, None


def _reading(handler: Any) -> Any:
    """A page that reads the log records: signed in, and the logging plugin's reader running."""

    async def endpoint(request: Request) -> Response:
        dash, session, denied = _signed_in(request)
        if denied is not None:
            return denied
        assert dash is not None and session is not None
        reader = dash.gateway.service(RequestLogReader)
        if reader is None:
            return _unavailable(dash, request, session)
        return await handler(request, dash, session, reader)

    return endpoint


def _pretty(value: Any) -> str:
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def _when(value: Any) -> str:
    if value in (None, ""):
        return ""
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    return str(value).replace("T", " ")[:19]


def _seconds(value: Any) -> str:
    return "" if value is None else (f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s")


def _usd(value: Any) -> str:
    return "" if value is None else f"${value:.6f}".rstrip("0").rstrip(".") if value else "$0"


def _segment(value: Any) -> str:
    """A value as one path segment: every reserved character quoted, dots too (no ``..`` segment)."""
    return quote(str(value), safe="").replace(".", "%2E")


def _parse_local(value: str, name: str) -> float | None:
    """A ``datetime-local`` field (UTC) as epoch seconds."""
    if not value:
        return None
    try:
        return parse_iso(value)
    except ValueError:
        raise BadRequest(f"`{name}` is not a date-time: {value!r}") from None


# -- sign-in and sign-out -----------------------------------------------------------------------------

async def login(request: Request) -> Response:
    dash = _dashboard(request)
    if dash is None:
        return _not_running()
    nxt = _safe_next(request.query_params.get("next"))
    error = None
    status = 200
    if request.method == "POST":
        form = await _form(request)
        nxt = _safe_next(form.get("next"))
        if not dash.sessions.check_login_token(request.cookies.get(LOGIN_COOKIE), form.get("csrf_token")):
            error, status = "The form expired or was not sent from this page: try again.", 403
        else:
            error, status, principal = await _authenticate_admin(dash, form.get("key", ""))
            if principal is not None:
                response = _redirect(nxt)
                response.set_cookie(SESSION_COOKIE, dash.sessions.issue(principal.tenant, principal.key_id),
                                    max_age=int(dash.settings.session_ttl), path=PREFIX, httponly=True,
                                    samesite="strict", secure=dash.secure(request))
                response.delete_cookie(LOGIN_COOKIE, path=PREFIX)
                log.info("dashboard_sign_in", tenant=principal.tenant, key_id=principal.key_id)
                return response
    nonce = dash.sessions.login_nonce()
    response = dash.render(request, "login.html", status=status, error=error, next=nxt,
                           csrf_token=dash.sessions.login_token(nonce))
    response.set_cookie(LOGIN_COOKIE, nonce, max_age=3600, path=PREFIX, httponly=True, samesite="strict",
                        secure=dash.secure(request))
    return response


async def _authenticate_admin(dash: Dashboard, key: str) -> tuple[str | None, int, Any]:
    key = key.strip()
    if not key:
        return "Enter an admin key.", 401, None
    try:
        principal = await dash.gateway.authenticate({"authorization": f"Bearer {key}"})
    except AuthenticationFailed:
        return "This key is invalid or expired.", 401, None
    if not principal.admin:
        # Without the auth plugin every caller is anonymous, never an admin: there is no way in.
        return "This key is not an admin key (the auth plugin with `admin = true` on the key in [auth]).", 403, None
    return None, 200, principal


async def logout(request: Request) -> Response:
    dash, session, denied = _signed_in(request)
    if denied is not None:
        return denied
    assert dash is not None and session is not None
    form = await _form(request)
    if not dash.sessions.check_csrf(session, form.get("csrf_token")):
        return Response("refused: the form has no valid CSRF token", status_code=403, media_type="text/plain",
                        headers=SECURITY_HEADERS)
    response = _redirect(f"{PREFIX}/login")
    response.delete_cookie(SESSION_COOKIE, path=PREFIX)
    return response


async def home(request: Request) -> Response:
    dash, session, denied = _signed_in(request)
    if denied is not None:
        return denied
    assert dash is not None
    sections = dash.sections()
    if sections:
        return _redirect(sections[0].path)
    return dash.render(request, "message.html", session=session, title="Nothing to show",
                       message="No section is available: the logs and usage pages need the logging plugin.")


# -- logs ---------------------------------------------------------------------------------------------

LOG_FIELDS = ("model", "status", "customer", "meta_key", "meta_value", "start", "end", "errors")


def _log_query(params: Any, page_size: int) -> tuple[LogQuery, dict[str, str]]:
    form = {name: (params.get(name) or "").strip() for name in LOG_FIELDS}
    filters: list[tuple[str, str, Any]] = []
    if form["model"]:
        filters.append(("model", "", form["model"]))
    if form["status"]:
        filters.append(("status_code", "", form["status"]))
    if form["customer"]:
        filters.append(("customer_identifier", "", form["customer"]))
    if form["meta_key"]:
        filters.append((f"metadata__{form['meta_key']}", "", form["meta_value"]))
    if form["errors"]:
        filters.append(("status_code", "gte", 400))
    try:
        page = max(1, int(params.get("page") or 1))
    except ValueError:
        page = 1
    query = LogQuery(filters=filters, page=page, page_size=page_size,
                     start_time=_parse_local(form["start"], "from"), end_time=_parse_local(form["end"], "to"))
    return query, form


@_reading
async def logs(request: Request, dash: Dashboard, session: Session, reader: RequestLogReader) -> Response:
    count, records, error, status = 0, [], None, 200
    form = {name: (request.query_params.get(name) or "").strip() for name in LOG_FIELDS}
    page = 1
    try:
        query, form = _log_query(request.query_params, dash.settings.page_size)
        page = query.page
        count, records = await reader.list(session.tenant, query)
    except BadRequest as exc:
        error, status = exc.message, 400
    except StoreUnavailable as exc:
        error, status = f"The log store is unavailable: {exc}", 503
    pages = max(1, math.ceil(count / dash.settings.page_size))
    base = {k: v for k, v in form.items() if v}

    def page_url(n: int) -> str:
        return f"{PREFIX}/logs?{urlencode({**base, 'page': n})}"

    return dash.render(request, "logs.html", status=status, session=session, records=records, count=count,
                       form=form, error=error, page=page, pages=pages,
                       previous_url=page_url(page - 1) if page > 1 else None,
                       next_url=page_url(page + 1) if page < pages else None)


@_reading
async def log_detail(request: Request, dash: Dashboard, session: Session, reader: RequestLogReader) -> Response:
    unique_id = request.path_params["unique_id"]
    try:
        record = await reader.get(session.tenant, unique_id)
    except StoreUnavailable as exc:
        return dash.render(request, "message.html", status=503, session=session, title="Store unavailable",
                           message=f"The log store is unavailable: {exc}")
    if record is None:
        return dash.render(request, "message.html", status=404, session=session, title="Not found",
                           message=f"No request log {unique_id} in this tenant.")
    return dash.render(request, "log_detail.html", session=session, r=record)


def _unavailable(dash: Dashboard, request: Request, session: Session) -> Response:
    return dash.render(request, "message.html", status=503, session=session, title="Logging is not running",
                       message="This page reads the log records: enable the logging plugin (and keep it in the pipeline).")


# -- usage --------------------------------------------------------------------------------------------

class Span(msgspec.Struct, frozen=True):
    """The time range of a usage view: its name, bucket width and the buckets' starts (UTC)."""

    name: str
    bucket: str
    buckets: list[float]

    @property
    def first(self) -> float:
        return self.buckets[0]


def _span(params: Any, default: str = "24h") -> Span:
    name = params.get("range") if params.get("range") in RANGES else default
    bucket = params.get("bucket") if params.get("bucket") in ("hour", "day") else ("hour" if name == "24h" else "day")
    width = 3600 if bucket == "hour" else 86400
    now = time.time()
    # Whole buckets (aligned on the hour or the UTC day): what the logging plugin's roll-up serves (hours, days).
    first = math.floor((now - RANGES[name]) / width) * width
    return Span(name=name, bucket=bucket, buckets=[float(first + i * width) for i in range(int((now - first) // width) + 1)])


def _store_down(dash: Dashboard, request: Request, session: Session, what: str, exc: Exception) -> Response:
    return dash.render(request, "message.html", status=503, session=session, title="Store unavailable",
                       message=f"The {what} store is unavailable: {exc}")


@_reading
async def usage(request: Request, dash: Dashboard, session: Session, reader: RequestLogReader) -> Response:
    span = _span(request.query_params)
    group = request.query_params.get("group") if request.query_params.get("group") in GROUPS else "model"
    query = LogQuery(start_time=span.first)
    cache = dash.gateway.service(CacheStats)
    try:
        series = await reader.usage(session.tenant, query, bucket=span.bucket)
        grouped = await reader.usage(session.tenant, query, bucket=span.bucket, group_by=group, percentiles=False)
        # Latency percentiles cost a sort of the range (or histograms): for the series and the models only.
        tops = {g: await reader.usage(session.tenant, query, bucket=None, group_by=g, percentiles=g == "model")
                for g in GROUPS}
        cache_now = await cache.stats(session.tenant) if cache is not None else None
    except StoreUnavailable as exc:
        return _store_down(dash, request, session, "log", exc)
    totals = _total(series)
    plot = _plot_data(span.buckets, series, grouped)
    for rows in tops.values():
        rows.sort(key=lambda r: (-r.requests, r.group))
    # The cache's plot: while the cache plugin runs, or when the range holds hits from when it did.
    show_cache = cache is not None or any(r.cache_hits for r in series)
    return dash.render(request, "usage.html", session=session, span=span.name, bucket=span.bucket, group=group,
                       ranges=list(RANGES), groups=GROUPS, totals=totals, tops=tops, plot=plot,
                       show_cache=show_cache, cache_now=cache_now)


def _total(rows: list[UsageBucket]) -> dict[str, Any]:
    requests = sum(r.requests for r in rows)
    return {
        "requests": requests, "errors": sum(r.errors for r in rows),
        "tokens": sum(r.total_tokens for r in rows), "cost": sum(r.cost for r in rows),
        "cache_hits": sum(r.cache_hits for r in rows),
        "cache_hit_rate": (sum(r.cache_hits for r in rows) / requests) if requests else None,
    }


def _plot_data(buckets: list[float], series: list[UsageBucket], grouped: list[UsageBucket] = ()) -> dict[str, Any]:
    """Values aligned on every bucket of the range (a bucket without records is 0, or null for latency
    and the cache hit rate)."""
    index = {b: i for i, b in enumerate(buckets)}
    n = len(buckets)
    out: dict[str, Any] = {"buckets": buckets}
    for name in ("requests", "errors", "total_tokens", "cost"):
        out[name] = [0] * n
    for name in ("p50_latency", "p95_latency", "cache_hit_rate"):
        out[name] = [None] * n
    for row in series:
        i = index.get(row.bucket)
        if i is None:
            continue
        for name in ("requests", "errors", "total_tokens", "cost", "p50_latency", "p95_latency"):
            out[name][i] = getattr(row, name)
        out["cache_hit_rate"][i] = round(row.cache_hits / row.requests, 4) if row.requests else None
    by_group: dict[str, list[int]] = {}
    for row in grouped:
        i = index.get(row.bucket)
        if i is not None:
            by_group.setdefault(row.group or "(none)", [0] * n)[i] = row.requests
    out["by_group"] = by_group
    return out


# -- customers ----------------------------------------------------------------------------------------

def _serving(protocol: type, title: str, message: str) -> Any:
    """A page that reads ``protocol``'s service: signed in, and a running plugin providing it."""

    def wrap(handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            dash, session, denied = _signed_in(request)
            if denied is not None:
                return denied
            assert dash is not None and session is not None
            service = dash.gateway.service(protocol)
            if service is None:
                return dash.render(request, "message.html", status=503, session=session, title=title, message=message)
            return await handler(request, dash, session, service)

        return endpoint

    return wrap


_customers_page = _serving(CustomerReader, "Limits are not running",
                           "This page reads the customers: enable the limits plugin (and keep it in the pipeline).")


def _page_number(params: Any) -> int:
    try:
        return max(1, int(params.get("page") or 1))
    except ValueError:
        return 1


@_customers_page
async def customers(request: Request, dash: Dashboard, session: Session, reader: CustomerReader) -> Response:
    page = _page_number(request.query_params)
    sort = request.query_params.get("sort")
    sort = sort if sort in CUSTOMER_SORTS else "-last_active_timeframe"
    size = dash.settings.page_size
    try:
        count, rows = await reader.list(session.tenant, page=page, page_size=size, sort_by=sort)
    except StoreUnavailable as exc:
        return _store_down(dash, request, session, "customers", exc)
    pages = max(1, math.ceil(count / size))

    def page_url(n: int) -> str:
        return f"{PREFIX}/customers?{urlencode({'sort': sort, 'page': n})}"

    return dash.render(request, "customers.html", session=session, customers=rows, count=count, page=page,
                       pages=pages, sort=sort, sorts=CUSTOMER_SORTS,
                       previous_url=page_url(page - 1) if page > 1 else None,
                       next_url=page_url(page + 1) if page < pages else None)


@_customers_page
async def customer_detail(request: Request, dash: Dashboard, session: Session, reader: CustomerReader) -> Response:
    identifier = request.path_params["identifier"]
    span = _span(request.query_params, default="30d")
    logs = dash.gateway.service(RequestLogReader)
    try:
        customer = await reader.get(session.tenant, identifier)
    except StoreUnavailable as exc:
        return _store_down(dash, request, session, "customers", exc)
    if customer is None:
        return dash.render(request, "message.html", status=404, session=session, title="Not found",
                           message=f"No customer {identifier} in this tenant.")
    plot = totals = None
    models: list[UsageBucket] = []
    if logs is not None:
        # The logs reader's usage with a customer filter: the same aggregates as the usage page.
        query = LogQuery(filters=[("customer_identifier", "", customer["customer_identifier"])], start_time=span.first)
        try:
            series = await logs.usage(session.tenant, query, bucket=span.bucket)
            models = await logs.usage(session.tenant, query, bucket=None, group_by="model", percentiles=False)
        except StoreUnavailable as exc:
            return _store_down(dash, request, session, "log", exc)
        models.sort(key=lambda r: (-r.requests, r.group))
        totals = _total(series)
        plot = _plot_data(span.buckets, series)
    return dash.render(request, "customer_detail.html", session=session, c=customer, span=span.name,
                       bucket=span.bucket, ranges=list(RANGES), plot=plot, totals=totals, models=models)


# -- keys ---------------------------------------------------------------------------------------------

_keys_page = _serving(ApiKeyDirectory, "Auth is not running",
                      "This page lists the gateway's API keys: enable the auth plugin (and keep it in the pipeline).")
KEY_USAGE_RANGE = "30d"


def _refused() -> Response:
    return Response("refused: the form has no valid CSRF token", status_code=403, media_type="text/plain",
                    headers=SECURITY_HEADERS)


async def _keys_view(request: Request, dash: Dashboard, session: Session, directory: ApiKeyDirectory, *,
                     status: int = 200, **context: Any) -> Response:
    include_revoked = bool(request.query_params.get("revoked"))
    try:
        keys = await directory.list(session.tenant, include_revoked=include_revoked)
    except StoreUnavailable as exc:
        return _store_down(dash, request, session, "keys", exc)
    usage: dict[str, UsageBucket] = {}
    logs = dash.gateway.service(RequestLogReader)
    if logs is not None:
        start = math.floor((time.time() - RANGES[KEY_USAGE_RANGE]) / 3600) * 3600
        try:
            rows = await logs.usage(session.tenant, LogQuery(start_time=start), bucket=None, group_by="key",
                                    percentiles=False)
            usage = {r.group: r for r in rows}
        except StoreUnavailable:
            pass  # the keys still show, without their usage
    context.setdefault("form", {"name": "", "environment": "production", "expires": ""})
    context.setdefault("revoked_id", None)
    return dash.render(request, "keys.html", status=status, session=session, keys=keys, usage=usage,
                       usage_range=KEY_USAGE_RANGE if logs is not None else None,
                       include_revoked=include_revoked, **context)


@_keys_page
async def keys(request: Request, dash: Dashboard, session: Session, directory: ApiKeyDirectory) -> Response:
    if request.method == "GET":
        return await _keys_view(request, dash, session, directory, revoked_id=request.query_params.get("done"))
    form = await _form(request)
    if not dash.sessions.check_csrf(session, form.get("csrf_token")):
        return _refused()
    fields = {"name": form.get("name", "").strip(), "environment": form.get("environment", "production"),
              "expires": form.get("expires", "").strip()}
    environment = fields["environment"] if fields["environment"] in ("production", "test") else "production"
    try:
        created, plain = await directory.create(
            session.tenant, name=fields["name"], environment=environment,  # type: ignore[arg-type]
            expires_at=_parse_local(fields["expires"], "expires"), by=session.key_id or None)
    except BadRequest as exc:
        return await _keys_view(request, dash, session, directory, status=400, error=exc.message, form=fields)
    except StoreUnavailable as exc:
        return _store_down(dash, request, session, "keys", exc)
    # The full key is in this one answer (no-store), never again: no redirect that could lose it.
    return await _keys_view(request, dash, session, directory, status=201, created=created, plain_key=plain)


@_keys_page
async def revoke_key(request: Request, dash: Dashboard, session: Session, directory: ApiKeyDirectory) -> Response:
    form = await _form(request)
    if not dash.sessions.check_csrf(session, form.get("csrf_token")):
        return _refused()
    key_id = request.path_params["key_id"]
    try:
        revoked = await directory.revoke(session.tenant, key_id, by=session.key_id or None)
    except StoreUnavailable as exc:
        return _store_down(dash, request, session, "keys", exc)
    if revoked is None:
        return dash.render(request, "message.html", status=404, session=session, title="Not found",
                           message=f"No database key {key_id} in this tenant.")
    # The list with the revoked keys, this one among them: what was done stays in sight.
    return _redirect(f"{PREFIX}/keys?{urlencode({'revoked': 1, 'done': revoked['id']})}")


# -- prompts ------------------------------------------------------------------------------------------

def _prompts_page(handler: Any) -> Any:
    if PROMPT_CATALOG is None:
        async def absent(request: Request) -> Response:
            return Response("not found", status_code=404, media_type="text/plain", headers=SECURITY_HEADERS)
        return absent
    return _serving(PROMPT_CATALOG, "Prompts are not running",
                    "This page lists the managed prompts: enable the prompts plugin (and keep it in the pipeline).")(handler)


@_prompts_page
async def prompts(request: Request, dash: Dashboard, session: Session, catalog: Any) -> Response:
    try:
        found = await catalog.list_prompts(session.tenant)
    except StoreUnavailable as exc:
        return _store_down(dash, request, session, "prompts", exc)
    return dash.render(request, "prompts.html", session=session, prompts=found)


@_prompts_page
async def prompt_detail(request: Request, dash: Dashboard, session: Session, catalog: Any) -> Response:
    prompt_id = request.path_params["prompt_id"]
    try:
        found = {p.prompt_id: p for p in await catalog.list_prompts(session.tenant)}.get(prompt_id)
        versions = await catalog.versions(session.tenant, prompt_id) if found is not None else None
    except StoreUnavailable as exc:
        return _store_down(dash, request, session, "prompts", exc)
    if found is None or versions is None:
        return dash.render(request, "message.html", status=404, session=session, title="Not found",
                           message=f"No prompt {prompt_id} in this tenant.")
    return dash.render(request, "prompt_detail.html", session=session, p=found, versions=list(reversed(versions)))


async def static(request: Request) -> Response:
    dash = _dashboard(request)
    if dash is None:
        return _not_running()
    name = request.path_params["name"]
    body = dash.static.get(name)
    if body is None:
        return Response("not found", status_code=404, media_type="text/plain")
    return Response(body, media_type=STATIC_TYPES[name[name.rfind("."):]],
                    headers={"cache-control": "public, max-age=3600", "x-content-type-options": "nosniff"})


ROUTES = [
    (f"{PREFIX}", home, ["GET"]),
    (f"{PREFIX}/", home, ["GET"]),
    (f"{PREFIX}/login", login, ["GET", "POST"]),
    (f"{PREFIX}/logout", logout, ["POST"]),
    (f"{PREFIX}/logs", logs, ["GET"]),
    (f"{PREFIX}/logs/{{unique_id}}", log_detail, ["GET"]),
    (f"{PREFIX}/usage", usage, ["GET"]),
    (f"{PREFIX}/customers", customers, ["GET"]),
    (f"{PREFIX}/customers/{{identifier:path}}", customer_detail, ["GET"]),
    (f"{PREFIX}/keys", keys, ["GET", "POST"]),
    (f"{PREFIX}/prompts", prompts, ["GET"]),
    (f"{PREFIX}/prompts/{{prompt_id:path}}", prompt_detail, ["GET"]),
    (f"{PREFIX}/keys/{{key_id}}/revoke", revoke_key, ["POST"]),
    (f"{PREFIX}/static/{{name}}", static, ["GET"]),
]
