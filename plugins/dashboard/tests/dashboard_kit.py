"""What the dashboard's tests share: the admin keys and a signed-in HTTP client."""

from __future__ import annotations

import re

import httpx2

from respan_gateway.testing import GatewayServer

ADMIN_KEY = "sk-respan-admin-key"
OTHER_ADMIN_KEY = "sk-respan-other-tenant-admin"
KEYS = (f'{{ key = "{ADMIN_KEY}", tenant = "acme", name = "ops", admin = true }}, '
        f'{{ key = "{OTHER_ADMIN_KEY}", tenant = "globex", name = "globex-ops", admin = true }}, '
        '{ key = "sk-globex-app", tenant = "globex", name = "globex-app" }')


def sign_in(gw: GatewayServer, key: str = ADMIN_KEY) -> httpx2.Client:
    """An HTTP client holding a dashboard session (as a browser would after the sign-in form)."""
    client = httpx2.Client(base_url=gw.url, timeout=10)
    page = client.get("/ui/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)[1]
    answer = client.post("/ui/login", data={"key": key, "csrf_token": token, "next": "/ui/logs"})
    assert answer.status_code == 303, answer.text
    return client


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html)[1]
