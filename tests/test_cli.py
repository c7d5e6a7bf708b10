"""The real CLI: `respan-gateway serve` as a user runs it, several workers, a broken config.

The graceful SIGTERM drain of a stream in flight is tested on every server in test_serve_servers.py.
"""

from __future__ import annotations

from pathlib import Path

import httpx2
import openai

from respan_gateway.testing import FakeUpstream, GatewayProcess, test_config

MESSAGES = [{"role": "user", "content": "hi"}]


def config_file(tmp_path: Path, upstream: FakeUpstream, extra: str = "") -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(test_config(upstream.url, extra))
    return str(path)


def test_serve_with_two_workers(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    with GatewayProcess(config_file(tmp_path, fake_upstream), workers=2) as gateway:
        client = gateway.openai()
        for _ in range(6):
            assert client.chat.completions.create(model="mock/m", messages=MESSAGES).choices
        assert httpx2.get(gateway.url + "/readyz").status_code == 200


def test_serve_refuses_a_broken_config(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    gateway = GatewayProcess(config_file(tmp_path, fake_upstream, "[server]\nworkers = \"two\"\n"))
    try:
        gateway.start()
    except RuntimeError as exc:
        assert "`server.workers`: invalid enum value 'two'" in str(exc)  # a number or "auto"
    else:  # pragma: no cover - the assertion is the point
        raise AssertionError("the gateway started on a broken config")


def test_the_default_config_serves_the_readme_request(tmp_path: Path) -> None:
    """README's first request: the default config, the mock provider, the local development key."""
    env = {"RESPAN_API_KEY": "sk-readme", "DATABASE_URL": f"sqlite:///{tmp_path}/respan.sqlite3"}
    with GatewayProcess("config/gateway.toml", env=env) as gateway:
        client = openai.OpenAI(base_url=gateway.base_url, api_key="sk-readme", max_retries=0)
        answer = client.chat.completions.create(model="mock/gpt-4o-mini", messages=MESSAGES,
                                                extra_body={"customer_identifier": "user_123"})
        assert "mock response" in answer.choices[0].message.content
