"""Fixtures of the prompts plugin's tests: a prompts folder and a gateway serving it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from prompts_kit import KEYS

from respan_gateway.testing import GatewayServer


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
