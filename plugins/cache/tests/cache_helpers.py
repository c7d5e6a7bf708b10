"""Helpers of the cache plugin's tests."""

from __future__ import annotations

from typing import Any

import httpx2

from respan_gateway.testing import TEST_KEY, GatewayServer

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello to Paris"}]
ANSWER = "Hello from the fake upstream!"
CACHED = {"cache_enabled": True}
OTHER_KEY = "sk-respan-other-tenant"
# A second key of another tenant, for the isolation tests.
OTHER_TENANT_KEYS = f'{{ key = "{OTHER_KEY}", tenant = "globex", name = "other" }}'


def scenario(name: str) -> dict[str, Any]:
    """Respan's `extra_headers` param that tells the fake upstream what to do (not part of the key)."""
    return {"extra_headers": {"x-fake-scenario": name}}


def post(gw: Any, body: dict[str, Any] | bytes, *, key: str = TEST_KEY, path: str = "chat/completions") -> httpx2.Response:
    content = body if isinstance(body, bytes) else None
    return httpx2.post(gw.base_url + path, headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
                       content=content, json=None if content is not None else body, timeout=30)


def cache_of(gw: GatewayServer) -> Any:
    """The running cache middleware (to move its clock, or read its store)."""
    return dict(gw.gateway.middlewares)["cache"]


def chat_requests(fake: Any) -> int:
    return sum(1 for r in fake.requests if r.path.endswith("/chat/completions"))
