"""``respan-gateway keys create|list|revoke`` as an operator runs it: a subprocess on a config file,
against the database a running gateway reads."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import openai

from respan_gateway.testing import GatewayServer

from keys_kit import KeysClient, auth_config, me

MESSAGES = [{"role": "user", "content": "hi"}]


def keys(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "respan_gateway.cli", "keys", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=120)


def test_keys_create_list_revoke_from_the_cli(tmp_path: Path, fake_upstream, database_toml, gateway_factory) -> None:
    ttl = 0.3
    config = tmp_path / "gateway.toml"
    config.write_text(auth_config(fake_upstream, database_toml, ttl=ttl))

    created = keys(config, "create", "--tenant", "acme", "--name", "from-cli", "--environment", "test",
                   "--limit", "spend_per_day=5", "--limit", "requests_per_minute=60", "--json")
    assert created.returncode == 0, created.stderr
    shown = json.loads(created.stdout)  # stdout is the key alone: process logs go to stderr
    key = shown["key"]
    assert shown["tenant"] == "acme" and shown["limits"]["spend_per_day"] == 5.0
    assert shown["limits"]["requests_per_minute"] == 60 and shown["environment"] == "test"

    gw: GatewayServer = gateway_factory(config=config.read_text())
    client = gw.openai(api_key=key)
    assert client.chat.completions.create(model="mock/m", messages=MESSAGES).choices
    assert me(gw, key).json()["limits"]["requests_per_minute"] == 60
    # The API and the CLI see the same keys.
    assert [k["id"] for k in KeysClient(gw).request("GET").json()["results"]] == [shown["id"]]

    human = keys(config, "create", "--tenant", "globex", "--name", "admin-from-cli", "--admin")
    assert human.returncode == 0, human.stderr
    assert "shown once" in human.stdout and "rsp_" in human.stdout
    admin_key = next(line.split()[1] for line in human.stdout.splitlines() if line.startswith("key:"))
    assert KeysClient(gw, admin_key).request("GET").json()["results"][0]["name"] == "admin-from-cli"

    listed = keys(config, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {k["name"] for k in json.loads(listed.stdout)} == {"from-cli", "admin-from-cli"}
    assert key not in listed.stdout and admin_key not in listed.stdout  # never the secret
    table = keys(config, "list", "--tenant", "acme")
    assert shown["id"] in table.stdout and "admin-from-cli" not in table.stdout and key not in table.stdout

    wrong_tenant = keys(config, "revoke", shown["id"], "--tenant", "globex")
    assert wrong_tenant.returncode == 1 and "no key" in wrong_tenant.stderr
    revoked = keys(config, "revoke", shown["id"])
    assert revoked.returncode == 0 and "revoked" in revoked.stdout and f"key_cache_ttl = {ttl:g} s" in revoked.stdout
    # The running gateway learns it from the database within its cache TTL.
    deadline = time.monotonic() + ttl + 5
    while True:
        try:
            client.chat.completions.create(model="mock/m", messages=MESSAGES)
        except openai.AuthenticationError:
            break
        assert time.monotonic() < deadline, "the revoked key still works past the cache TTL"
        time.sleep(0.05)
    assert shown["id"] not in keys(config, "list").stdout
    assert shown["id"] in keys(config, "list", "--include-revoked").stdout


def test_bad_cli_input_names_the_problem(tmp_path: Path, fake_upstream, database_toml) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(auth_config(fake_upstream, database_toml))
    bad_limit = keys(config, "create", "--limit", "spend_per_week=1")
    assert bad_limit.returncode == 2 and "spend_per_week" in bad_limit.stderr
    past = keys(config, "create", "--expires-at", "2001-01-01")
    assert past.returncode == 2 and "in the future" in past.stderr
    assert keys(config, "revoke", "no-such-id").returncode == 1
    check = subprocess.run([sys.executable, "-m", "respan_gateway.cli", "check-config", str(config)],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0 and "commands:  keys" in check.stdout
