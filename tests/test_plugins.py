"""Plugins: discovery through entry points, disabling, third-party packages, failing by name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2
import pytest

from respan_gateway import Config, ConfigError, Gateway, hookimpl
from respan_gateway.testing import GatewayProcess, GatewayServer, test_config

PACKAGES = Path(__file__).parent / "plugin_packages"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two test plugin packages, pip-installed (as a user would) into a folder of their own."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target),
         str(PACKAGES / "respan-hello-plugin"), str(PACKAGES / "respan-broken-plugin")],
        check=True, capture_output=True,
    )
    return target


def check_config(path: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "respan_gateway.cli", "check-config", str(path)],
                          env={"PYTHONPATH": str(site), "PATH": ""}, capture_output=True, text=True)


def write_config(tmp_path: Path, upstream_url: str, extra: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(test_config(upstream_url, extra))
    return path


def test_broken_plugin_fails_the_start_by_name(tmp_path: Path, plugin_site: Path, fake_upstream) -> None:
    result = check_config(write_config(tmp_path, fake_upstream.url, ""), plugin_site)
    assert result.returncode == 2
    assert "plugin `broken`" in result.stderr and "cannot be imported" in result.stderr


def test_disabled_plugin_is_never_imported(tmp_path: Path, plugin_site: Path, fake_upstream) -> None:
    result = check_config(write_config(tmp_path, fake_upstream.url, '[plugins]\ndisabled = ["broken"]\n'), plugin_site)
    assert result.returncode == 0, result.stderr
    assert "hello" in result.stdout  # the third-party middleware is in the pipeline


def test_third_party_plugin_appears_and_runs(tmp_path: Path, plugin_site: Path, fake_upstream) -> None:
    config = write_config(tmp_path, fake_upstream.url, '[plugins]\ndisabled = ["broken"]\n[hello]\ngreeting = "bonjour"\n')
    with GatewayProcess(str(config), env={"PYTHONPATH": str(plugin_site)}) as gateway:
        plugins = {p["name"]: p for p in httpx2.get(gateway.url + "/-/plugins").json()["plugins"]}
        assert plugins["hello"]["package"] == "respan-hello-plugin"
        assert plugins["hello"]["version"] == "1.2.3"
        assert "broken" not in plugins
        raw = gateway.openai().chat.completions.with_raw_response.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
        assert raw.headers["x-hello-plugin"] == "bonjour"
        assert httpx2.get(gateway.url + "/hello").json() == {"hello": "world"}


def test_third_party_plugin_config_is_validated(tmp_path: Path, plugin_site: Path, fake_upstream) -> None:
    config = write_config(tmp_path, fake_upstream.url, '[plugins]\ndisabled = ["broken"]\n[hello]\ngreting = "typo"\n')
    result = check_config(config, plugin_site)
    assert result.returncode == 2
    assert "`hello.greting`: unknown key" in result.stderr


def test_disabling_a_bundled_plugin(gateway_factory) -> None:
    gateway = gateway_factory('[plugins]\ndisabled = ["auth"]\n')
    info = httpx2.get(gateway.url + "/-/plugins").json()
    assert "auth" not in {p["name"] for p in info["plugins"]}
    assert "auth" not in info["pipeline"] and "params" in info["pipeline"]
    # Without auth, requests need no key (and the [auth] section of the config is ignored).
    response = httpx2.post(gateway.base_url + "chat/completions", json={"model": "mock/m", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200


def test_explicit_pipeline_order_and_unknown_names(fake_upstream) -> None:
    config = Config.from_text(test_config(fake_upstream.url, '[plugins]\npipeline = ["params", "auth"]\n'))
    assert [name for name, _ in Gateway.build(config).middlewares] == ["params", "auth"]
    with pytest.raises(ConfigError, match="no loaded plugin provides middleware `nope`"):
        Gateway.build(Config.from_text(test_config(fake_upstream.url, '[plugins]\npipeline = ["auth", "nope"]\n')))


def test_misspelt_hook_fails_by_plugin_name(fake_upstream) -> None:
    class Typo:
        __name__ = "typo_plugin"

        @hookimpl
        def register_middleware(self, register: Any) -> None:  # the hook is register_middlewares
            pass

    with pytest.raises(ConfigError, match="plugin `typo_plugin`.*register_middleware"):
        Gateway.build(Config.from_text(test_config(fake_upstream.url)), plugins=(Typo(),))


def test_plugin_registered_in_a_test_runs(gateway_factory) -> None:
    """The plugin author's path: define a plugin object in a test and start a gateway with it."""

    class Stamp:
        __name__ = "stamp"

        @hookimpl
        def register_middlewares(self, register: Any) -> None:
            class Middleware:
                def __init__(self, settings: Any, gateway: Any) -> None:
                    pass

                async def __call__(self, call: Any, call_next: Any) -> Any:
                    call.response_headers["x-stamp"] = call.principal.tenant
                    return await call_next(call)

            register("stamp", Middleware, order=150)

    gateway: GatewayServer = gateway_factory(plugins=(Stamp(),))
    raw = gateway.openai().chat.completions.with_raw_response.create(model="mock/m", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-stamp"] == "acme"
