"""The config file: env references, and errors that name the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from respan_gateway import Config, ConfigError, Gateway

BASE = '[providers.mock]\ntype = "mock"\n'


def build(text: str, env: dict[str, str] | None = None) -> Gateway:
    return Gateway.build(Config.from_text(text, "gateway.toml", env=env or {}))


def test_env_references() -> None:
    text = BASE + '[providers.up]\ntype = "openai_compatible"\nbase_url = "${UP_URL}"\napi_key = "${UP_KEY:-sk-default}"\n'
    gateway = build(text, {"UP_URL": "http://127.0.0.1:9/v1"})
    assert gateway.providers["up"].base_url == "http://127.0.0.1:9/v1"
    assert gateway.providers["up"].settings.api_key == "sk-default"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[server]\nport = "eighty"\n', "gateway.toml: `server.port`: expected `int`, got `str`"),
        ("[server]\nprot = 80\n", "`server.prot`: unknown key"),
        ("[upstream]\nread_timeout = []\n", "`upstream.read_timeout`: expected `float`, got `array`"),
        ("[cache_typo]\nx = 1\n", "unknown section `cache_typo`"),
        ('[auth]\nkeys = [{ key = "k", tenant = 5 }]\n', "`auth.keys[0].tenant`: expected `str`, got `int`"),
        ('[auth]\nkeys = [{ key_sha256 = "abc" }]\n', "`auth.keys[0]`: give `key` or a 64-hex-digit `key_sha256`"),
        ('[providers.x]\ntype = "nope"\n', "`providers.x.type`: no provider adapter `nope`"),
        ('[providers.x]\ntype = "openai_compatible"\n', "`providers.x.base_url`: an openai_compatible provider needs a base_url"),
        ('[providers.mock2]\ntype = "mock"\nrespons = "typo"\n', "`providers.mock2.respons`: unknown key"),
        ('[models."m"]\nprovider = "ghost"\n', "`models.m.provider`: no provider `ghost` is configured"),
        ('[models."m"]\ninput_cost = 1\n', "`models.m.provider`: required key is missing"),
        ('[providers.up]\ntype = "openai"\napi_key = "${NOT_SET_ANYWHERE}"\n', "`providers.up.api_key` references ${NOT_SET_ANYWHERE}, which is not set"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(text if text.startswith("[server\n") else BASE + text)
    assert message in str(info.value)


def test_the_default_config_is_valid() -> None:
    gateway = Gateway.build(Config.from_file("config/gateway.toml", env={}))
    names = [name for name, _ in gateway.middlewares]
    # metrics counts everything; logging sits between auth (a record needs a tenant) and params (a 400 is logged).
    assert names[:4] == ["metrics", "auth", "logging", "params"]
    assert {"mock", "openai"} <= set(gateway.providers)


def test_example_configs_are_valid() -> None:
    """Every file in config/examples/, and the config of deploy/ (compose, Kubernetes), starts (with every
    ${VAR} it references set)."""
    examples = sorted(Path("config/examples").glob("*.toml")) + sorted(Path("deploy").glob("*.toml"))
    assert Path("deploy/gateway.toml") in examples
    assert examples
    for path in examples:
        env = {name: "x" * 64 for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", path.read_text())}
        env = {k: ("a" * 64 if k.endswith("SHA256") else v) for k, v in env.items()}
        env = {k: ("postgresql://respan@db.invalid:5432/respan" if k == "DATABASE_URL" else v) for k, v in env.items()}
        Gateway.build(Config.from_file(path, env=env))
