"""Prompts: managed, versioned prompt templates, rendered in a sandbox into a request (SPEC section 6).

A request's ``prompt`` param (``{"prompt_id", "variables", "version", ...}``) names a prompt; the
middleware (order 500: after params and limits, before the cache, which so keys on the rendered
request) renders the version's messages with the variables and merges them, its model and its params
into the request, on chat completions, the native Anthropic endpoint and the Responses API. Prompts
come from the files of a folder (reviewed like code) and from the admin API (the gateway's database).
See README.md beside this file.
"""

from __future__ import annotations

from respan_gateway import hookimpl
from respan_gateway.hookspecs import RegisterCommand, RegisterMiddleware, RegisterRoute, RegisterStore

from . import check
from .api import ROUTES
from .middleware import PromptsMiddleware
from .settings import PromptsSettings
from .store import MIGRATIONS


@hookimpl
def register_middlewares(register: RegisterMiddleware) -> None:
    # Reads the typed `prompt` param: without the `params` stage (disabled) there is none, and it does nothing.
    register("prompts", PromptsMiddleware, order=500, settings=PromptsSettings)


@hookimpl
def register_routes(register: RegisterRoute) -> None:
    for path, endpoint, methods in ROUTES:
        register(path, endpoint, methods=methods)


@hookimpl
def register_stores(register: RegisterStore) -> None:
    register("prompts", MIGRATIONS)


@hookimpl
def register_commands(register: RegisterCommand) -> None:
    async def run(args: object, gateway: object) -> int:
        return check.run(args)  # offline: reads only the folder it is given

    register("prompts", run, arguments=check.configure, help="tools for prompt files (`prompts check DIR`)")


__all__ = ["PromptsMiddleware", "PromptsSettings"]
