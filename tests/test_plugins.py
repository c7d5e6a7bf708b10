"""Plugins: discovery through entry points, disabling, third-party packages, failing by name."""

from __future__ import annotations

import subprocess
import sys
import time
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


def test_a_plugin_that_fails_gets_the_client_a_500_envelope(gateway_factory) -> None:
    """A bug in a third-party stage (an exception no one handles) on a pipeline endpoint, which skips
    Starlette's router, and on a plugin's own route: a 500 in the OpenAI envelope naming nothing of it."""
    import openai

    class Buggy:
        __name__ = "buggy"

        @hookimpl
        def register_middlewares(self, register: Any) -> None:
            class Middleware:
                def __init__(self, settings: Any, gateway: Any) -> None:
                    pass

                async def __call__(self, call: Any, call_next: Any) -> Any:
                    raise RuntimeError("secret-detail-of-the-bug")

            register("buggy", Middleware, order=150)

        @hookimpl
        def register_routes(self, register: Any) -> None:
            async def broken(request: Any) -> Any:
                raise RuntimeError("secret-detail-of-the-bug")

            register("/api/buggy", broken, methods=["GET"])

    gateway: GatewayServer = gateway_factory(plugins=(Buggy(),))
    client = gateway.openai()
    calls = (lambda: client.chat.completions.create(model="mock/m", messages=[{"role": "user", "content": "hi"}]),
             lambda: client.embeddings.create(model="mock/m", input="hi"))
    for send in calls:
        with pytest.raises(openai.InternalServerError) as info:
            send()
        assert info.value.body["message"] == "internal gateway error; see the gateway's logs"
        assert "secret-detail" not in info.value.response.text
    response = httpx2.get(gateway.base_url + "buggy")
    assert response.status_code == 500, response.text
    assert response.json()["error"]["message"] == "internal gateway error; see the gateway's logs"
    assert "secret-detail" not in response.text


def test_third_party_observer_sees_one_outcome_per_call(tmp_path: Path, plugin_site: Path, fake_upstream) -> None:
    """JSON, stream, cut stream, rejected by params, refused by auth: each call is observed once."""
    import json

    import openai

    outcomes = tmp_path / "outcomes.jsonl"
    config = write_config(tmp_path, fake_upstream.url,
                          f'[plugins]\ndisabled = ["broken"]\n[hello_outcomes]\npath = "{outcomes}"\n')
    with GatewayProcess(str(config), env={"PYTHONPATH": str(plugin_site)}) as gateway:
        client = gateway.openai()
        messages = [{"role": "user", "content": "hi"}]
        client.chat.completions.create(model="gpt-test", messages=messages)
        assert len(list(client.chat.completions.create(model="gpt-test", messages=messages, stream=True))) > 1
        with pytest.raises(openai.APIError):
            list(client.chat.completions.create(model="fake/fake-cut-after-2", messages=messages, stream=True))
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="gpt-test", messages=messages, extra_body={"retry_params": "often"})
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=gateway.base_url, api_key="sk-wrong", max_retries=0).chat.completions.create(
                model="gpt-test", messages=messages)
        # Observers run once the answer is sent, so the last one may still be on its way.
        deadline = time.monotonic() + 60
        while len(outcomes.read_text().splitlines()) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
    lines = [json.loads(line) for line in outcomes.read_text().splitlines()]
    assert len({line["request_id"] for line in lines}) == len(lines) == 5, lines
    plain, stream, cut, rejected, refused = lines
    assert (plain["status"], plain["stream_end"], plain["answer"], plain["provider"]) == (200, None, True, "fake")
    assert (stream["status"], stream["stream_end"], stream["answer"]) == (200, "complete", True)
    assert stream["chunks"] > 1
    assert (cut["status"], cut["stream_end"], cut["error"]) == (502, "error", "StreamInterrupted")
    assert cut["chunks"] == 3  # the role chunk and two pieces reached the client before the cut
    assert (rejected["status"], rejected["error"], rejected["answer"]) == (400, "BadRequest", False)
    assert (refused["status"], refused["error"]) == (401, "AuthenticationFailed")


def test_a_missing_requirement_stops_the_start_naming_both(fake_upstream) -> None:
    class Needy:
        __name__ = "needy"

        @hookimpl
        def register_middlewares(self, register: Any) -> None:
            # (a factory returning None would leave `needy` out, and it would need nothing)
            register("needy", lambda settings, gateway: (lambda call, call_next: call_next(call)), order=650,
                     requires=("routing",))

    config = Config.from_text(test_config(fake_upstream.url, '[plugins]\ndisabled = ["routing"]\n'))
    with pytest.raises(ConfigError, match=r"`needy` \(plugin `needy`\) requires `routing`, which is disabled or not installed"):
        Gateway.build(config, plugins=(Needy(),))
    config = Config.from_text(test_config(fake_upstream.url, '[plugins]\npipeline = ["auth", "needy"]\n'))
    with pytest.raises(ConfigError, match=r"requires `routing`, which is not in `plugins.pipeline`"):
        Gateway.build(config, plugins=(Needy(),))


def test_plugins_observers_chooses_and_orders_the_observers(gateway_factory, fake_upstream) -> None:
    seen: list[str] = []

    class Watchers:
        __name__ = "watchers"

        @hookimpl
        def register_observers(self, register: Any) -> None:
            class Named:
                def __init__(self, name: str) -> None:
                    self.name = name

                def observe(self, call: Any) -> None:
                    seen.append(self.name)

            register("first", lambda settings, gateway: Named("first"))
            register("second", lambda settings, gateway: Named("second"), requires=("first",))

    # Only the named observers run, in the config's order; `metrics` and `logging` are left out
    # (`limits_settle` stays: the limits middleware requires it).
    gw = gateway_factory('[plugins]\nobservers = ["second", "first", "limits_settle"]\n', plugins=(Watchers(),))
    assert [name for name, _ in gw.gateway.observers] == ["second", "first", "limits_settle"]
    gw.openai().chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    deadline = time.monotonic() + 60
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert seen == ["second", "first"]
    with pytest.raises(ConfigError, match=r"`plugins.observers`: no loaded plugin provides observer `nope`"):
        Gateway.build(Config.from_text(test_config(fake_upstream.url, '[plugins]\nobservers = ["nope"]\n')))
    with pytest.raises(ConfigError, match=r"`second` \(plugin `watchers`\) requires `first`, which is not in `plugins.observers`"):
        Gateway.build(Config.from_text(test_config(fake_upstream.url, '[plugins]\nobservers = ["second", "limits_settle"]\n')),
                      plugins=(Watchers(),))


@pytest.mark.parametrize("path", ["/api/chat/completions", "/metrics"])
def test_a_path_registered_twice_fails_the_start_naming_both(fake_upstream, path: str) -> None:
    class Squatter:
        __name__ = "squatter"

        @hookimpl
        def register_routes(self, register: Any) -> None:
            register(path, lambda request: None, methods=["GET"])

    owner = "respan_gateway" if path.startswith("/api/chat") else "metrics"
    with pytest.raises(ConfigError, match=f"registers the path {path}, already registered by") as failed:
        Gateway.build(Config.from_text(test_config(fake_upstream.url)), plugins=(Squatter(),))
    assert f"`{owner}`" in str(failed.value) and "`squatter`" in str(failed.value)


def test_a_plugin_adds_a_cli_command(tmp_path: Path, plugin_site: Path, fake_upstream) -> None:
    config = write_config(tmp_path, fake_upstream.url, '[plugins]\ndisabled = ["broken"]\n[hello]\ngreeting = "bonjour"\n')
    env = {"PYTHONPATH": str(plugin_site), "PATH": ""}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "respan_gateway.cli", *args], env=env, capture_output=True, text=True)

    # --config anywhere on the line; the command gets its settings and the gateway's database started.
    greeted = cli("hello", "--config", str(config), "world")
    assert greeted.returncode == 0, greeted.stderr
    assert greeted.stdout == "bonjour, world! (database started: True)\n"
    assert cli("hello", "nobody", "--config", str(config)).returncode == 3  # its exit code
    assert "greet someone" in cli("hello", "--help", "--config", str(config)).stdout
    # Blocked in the config: no such command.
    blocked = write_config(tmp_path, fake_upstream.url, '[plugins]\ndisabled = ["broken", "hello"]\n')
    refused = cli("hello", "world", "--config", str(blocked))
    assert refused.returncode == 2 and "invalid choice: 'hello'" in refused.stderr


def test_a_command_registered_twice_fails_naming_both(fake_upstream) -> None:
    class Impostor:
        __name__ = "impostor"

        @hookimpl
        def register_commands(self, register: Any) -> None:
            register("keys", lambda args, gateway: None, help="not the real one")

    with pytest.raises(ConfigError, match=r"registers the command `keys`, already registered by") as failed:
        Gateway.build(Config.from_text(test_config(fake_upstream.url)), plugins=(Impostor(),))
    assert "`impostor`" in str(failed.value) and "`auth`" in str(failed.value)
