"""The real CLI: `respan-gateway serve` as a user runs it, graceful SIGTERM, several workers."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx2
import openai

from respan_gateway.testing import FakeUpstream, GatewayProcess, test_config

MESSAGES = [{"role": "user", "content": "hi"}]


def config_file(tmp_path: Path, upstream: FakeUpstream, extra: str = "") -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(test_config(upstream.url, extra))
    return str(path)


def test_serve_answers_and_drains_a_stream_on_sigterm(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    gateway = GatewayProcess(config_file(tmp_path, fake_upstream)).start()
    try:
        assert gateway.openai().chat.completions.create(model="gpt-test", messages=MESSAGES).choices[0].message.content
        # A stream in flight when SIGTERM arrives is finished, not cut.
        stream = gateway.openai().chat.completions.create(
            model="gpt-test", messages=MESSAGES, stream=True,
            extra_body={"extra_headers": {"x-fake-scenario": "slow-chunks-100,chunks-8"}})
        chunks = [next(stream)]
        code: list[int] = []
        stopper = threading.Thread(target=lambda: code.append(gateway.terminate()))
        stopper.start()
        chunks += list(stream)
        stopper.join(30)
    finally:
        gateway.stop()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.count(" ") == 7 and chunks[-1].choices[0].finish_reason == "stop"
    assert code == [0], gateway.output


def test_serve_with_two_workers(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    with GatewayProcess(config_file(tmp_path, fake_upstream), workers=2) as gateway:
        client = gateway.openai()
        for _ in range(6):
            assert client.chat.completions.create(model="mock/m", messages=MESSAGES).choices
        assert httpx2.get(gateway.url + "/readyz").status_code == 200


def test_serve_refuses_a_broken_config(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    gateway = GatewayProcess(config_file(tmp_path, fake_upstream, "[server]\nworkers = \"two\"\n"), ready_timeout=15)
    try:
        gateway.start()
    except RuntimeError as exc:
        assert "`server.workers`: expected `int`, got `str`" in str(exc)
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
