"""Run the gateway on a real socket for tests: ``GatewayServer`` and a config to start from."""

from __future__ import annotations

from typing import Any

from ..app import create_app
from ..config import Config
from ._server import ServerThread

#: The gateway API key every test config accepts.
TEST_KEY = "sk-respan-test-key"


def test_config(upstream_url: str, extra: str = "") -> str:
    """A config (TOML text) with one key, the fake upstream as provider ``fake``, and a small catalog.

    ``extra`` is appended: more sections, or tables that add to the ones here. Slugs: ``gpt-test``
    (upstream name ``gpt-test-upstream``), ``fake/<anything>``, ``mock/<anything>``.
    """
    return f"""
[auth]
keys = [{{ key = "{TEST_KEY}", tenant = "acme", name = "test" }}]

[providers.fake]
type = "openai_compatible"
base_url = "{upstream_url}/v1"
api_key = "sk-upstream-secret-key"

[providers.mock]
type = "mock"

[models."gpt-test"]
provider = "fake"
upstream_model = "gpt-test-upstream"
input_cost = 1.0
output_cost = 2.0
{extra}
"""


class GatewayServer:
    """The gateway app (built from a config) served by hypercorn on 127.0.0.1:<free port> in a thread.

    ``base_url`` is what an OpenAI SDK is pointed at (``.../api/``); ``gateway`` is the running
    :class:`~respan_gateway.Gateway`, for a test that inspects it.
    """

    def __init__(self, config: Config | str, plugins: tuple[Any, ...] = ()) -> None:
        self.config = config if isinstance(config, Config) else Config.from_text(config, "<test config>")
        self.app = create_app(self.config, plugins=plugins)
        self.gateway = self.app.gateway
        self._server = ServerThread(self.app, name="gateway")

    def start(self) -> GatewayServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def base_url(self) -> str:
        return self._server.url + "/api/"

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the gateway's event loop (e.g. to flush a plugin's queue)."""
        return self._server.call(coro, timeout)

    def openai(self, **kwargs: Any) -> Any:
        """An ``openai.OpenAI`` client pointed at this gateway (no SDK retries unless asked)."""
        import openai

        kwargs.setdefault("api_key", TEST_KEY)
        kwargs.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=self.base_url, **kwargs)
