"""Helpers of the prompts plugin's tests."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

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


# Fixtures (imported by the test modules: a conftest.py here would shadow the `conftest` module other
# plugins' tests import by name).

@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "prompts"
    path.mkdir()
    return path


@pytest.fixture
def prompts_gateway(gateway_factory: Callable[..., GatewayServer], folder: Path, tmp_path: Path) -> Callable[..., GatewayServer]:
    """A gateway on ``folder`` (write the files first); ``extra``: more TOML; keyword args: [prompts] keys."""
    def start(extra: str = "", **settings: Any) -> GatewayServer:
        lines = "\n".join(f"{k} = {v!r}" for k, v in settings.items())
        return gateway_factory(f'[prompts]\nfolder = "{folder}"\n{lines}\n[logging]\nspill_dir = "{tmp_path}/spill"\n'
                               f'flush_interval = 0.05\n{extra}', keys=KEYS)
    return start
