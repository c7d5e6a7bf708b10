"""Dashboard: the gateway's web pages at ``/ui/`` (logs, a request's detail, usage over time).

Server-rendered HTML (Jinja2, autoescaped) with a small script of its own for the plots; nothing is
fetched or built at install time. Its sections read other plugins' services (the ``logging``
plugin's ``RequestLogReader``) and appear only when a running plugin provides them.
See README.md beside this file.
"""

from __future__ import annotations

from typing import Any

from respan_gateway import Settings, hookimpl

from .pages import ROUTES, Dashboard


class DashboardSettings(Settings):
    # Signs the session cookies. Empty: $RESPAN_DASHBOARD_SECRET, else a random one per process (sessions
    # then end at a restart and are not shared by workers or replicas: set one when running several).
    secret: str = ""
    # How long a sign-in lasts (seconds).
    session_ttl: float = 8 * 3600
    # The cookie's Secure flag; unset: set when the request came over https.
    secure_cookie: bool | None = None
    # Records per page of the logs table.
    page_size: int = 50


@hookimpl
def register_components(register: Any) -> None:
    # The pages' state (sessions, templates) and the [dashboard] section: nothing in the request path.
    register("dashboard", Dashboard, settings=DashboardSettings)


@hookimpl
def register_routes(register: Any) -> None:
    for path, endpoint, methods in ROUTES:
        register(path, endpoint, methods=methods)


__all__ = ["Dashboard", "DashboardSettings"]
