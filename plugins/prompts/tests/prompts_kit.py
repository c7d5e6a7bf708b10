"""Helpers of the prompts plugin's tests."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import httpx2

from respan_gateway.testing import TEST_KEY, GatewayServer

ADMIN_KEY = "sk-respan-test-admin"
OTHER_TENANT_KEY = "sk-respan-other-tenant-admin"
KEYS = (f'{{ key = "{ADMIN_KEY}", tenant = "acme", name = "admin", admin = true }}, '
        f'{{ key = "{OTHER_TENANT_KEY}", tenant = "globex", name = "other", admin = true }}')


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def chat(gw: Any, body: dict[str, Any], key: str = TEST_KEY) -> httpx2.Response:
    """A raw chat completion (the standard API: no model or messages needed with a prompt)."""
    return httpx2.post(gw.base_url + "chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=10)
