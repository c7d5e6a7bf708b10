"""Auth: gateway API keys (``Authorization: Bearer <key>`` or ``x-api-key``) mapped to a tenant.

Two kinds of keys: those of the config (``[auth] keys``, plain or as their SHA-256 hash), and those
issued through the keys API or ``respan-gateway keys`` (the ``api_keys`` store, hashed, looked up
through an in-process cache). The caller's :class:`~respan_gateway.Principal` (tenant, key id,
environment, admin flag, limits) is put on the call, and the plugin installs the gateway's
authenticator so that other routes (models list, logs API...) authenticate the same way. See README.md.
"""

from __future__ import annotations

from typing import Any

from respan_gateway import hookimpl
from respan_gateway.hookspecs import ApiKeyDirectory, RegisterCommand, RegisterMiddleware, RegisterRoute, RegisterStore

from .api import ROUTES
from .cli import add_arguments, keys_command
from .directory import KeyDirectory
from .middleware import Auth, AuthSettings, KeySettings, KeyStoreUnavailable
from .store import MIGRATIONS, ApiKey, ApiKeyStore, hash_key


def make_auth(settings: AuthSettings, gateway: Any) -> Auth:
    auth = Auth(settings, gateway)
    # The tenant's keys for other plugins (the dashboard's keys page): hookspecs.ApiKeyDirectory.
    gateway.provide(ApiKeyDirectory, KeyDirectory(auth))
    return auth


@hookimpl
def register_middlewares(register: RegisterMiddleware) -> None:
    register("auth", make_auth, order=100, settings=AuthSettings)


@hookimpl
def register_stores(register: RegisterStore) -> None:
    register("api_keys", MIGRATIONS)


@hookimpl
def register_routes(register: RegisterRoute) -> None:
    for path, endpoint, methods in ROUTES:
        register(path, endpoint, methods=methods)


@hookimpl
def register_commands(register: RegisterCommand) -> None:
    register("keys", keys_command, help="issue, list and revoke gateway API keys (the `api_keys` store)",
             arguments=add_arguments)


__all__ = ["ApiKey", "ApiKeyStore", "Auth", "AuthSettings", "KeyDirectory", "KeySettings", "KeyStoreUnavailable", "hash_key"]
