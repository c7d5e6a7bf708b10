"""Helpers of the auth plugin's tests: the admin keys, a config with them, the keys API as a script calls it."""

from __future__ import annotations

from typing import Any

import httpx2

from respan_gateway.testing import FakeUpstream, GatewayServer, test_config

ADMIN_KEY = "sk-acme-admin-key"
OTHER_ADMIN_KEY = "sk-globex-admin-key"
KEYS = (f'{{ key = "{ADMIN_KEY}", tenant = "acme", name = "acme-ops", admin = true }}, '
        f'{{ key = "{OTHER_ADMIN_KEY}", tenant = "globex", name = "globex-ops", admin = true }}')


def auth_config(upstream: FakeUpstream, database: str, *, ttl: float = 10.0, keys: str = "", extra: str = "") -> str:
    """The test config with the admin keys (and ``keys``), ``[auth] key_cache_ttl = ttl`` and ``database``."""
    text = test_config(upstream.url, database + extra, keys=KEYS + (", " + keys if keys else ""))
    return text.replace("[auth]\n", f"[auth]\nkey_cache_ttl = {ttl}\n", 1)


class KeysClient:
    """The keys API as an operator's script calls it."""

    def __init__(self, gateway: GatewayServer, key: str = ADMIN_KEY) -> None:
        self.url = gateway.url + "/api/keys/"
        self.headers = {"authorization": f"Bearer {key}"}

    def create(self, **body: Any) -> dict[str, Any]:
        r = httpx2.post(self.url, json=body, headers=self.headers, timeout=10)
        assert r.status_code == 201, r.text
        return r.json()

    def request(self, method: str, path: str = "", **kwargs: Any) -> httpx2.Response:
        return httpx2.request(method, self.url + path, headers=self.headers, timeout=10, **kwargs)


def me(gateway: GatewayServer, key: str) -> httpx2.Response:
    """GET /api/keys/me/: the principal the gateway gives ``key``."""
    return httpx2.get(gateway.url + "/api/keys/me/", headers={"authorization": f"Bearer {key}"}, timeout=10)
