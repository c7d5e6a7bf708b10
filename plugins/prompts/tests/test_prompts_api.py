"""The admin API's life cycle (create, add a version, deploy, the next request uses it) on SQLite and on
PostgreSQL; replicas on one PostgreSQL schema see a deploy within `cache_ttl`; tenants are apart;
file prompts are read-only."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest

from prompts_kit import folder, prompts_gateway, ADMIN_KEY, KEYS, OTHER_TENANT_KEY, chat, write  # noqa: F401 (fixtures)

from respan_gateway.hookspecs import PromptCatalog
from respan_gateway.testing import TEST_KEY, FakeUpstream, GatewayProcess, GatewayServer, test_config
from respan_gateway.testing.pytest_plugin import PG_URL

_SCHEMAS = itertools.count(1)


class Admin:
    """The prompts API as an admin (or any key) calls it."""

    def __init__(self, gw: Any, key: str = ADMIN_KEY) -> None:
        self.url, self.key = gw.url + "/api/prompts/", key

    def __call__(self, method: str, path: str = "", body: Any = None, key: str | None = None) -> httpx2.Response:
        return httpx2.request(method, self.url + path, json=body, timeout=10,
                              headers={"authorization": f"Bearer {key or self.key}"})


def _database(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f'\n[database]\nurl = "sqlite:///{tmp_path}/respan.sqlite3"\n'
    schema = f"{request.getfixturevalue('postgres_schema')}_p{next(_SCHEMAS)}"
    return f'\n[database]\nurl = "{PG_URL}"\nschema = "{schema}"\npool_size = 2\n'


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


VERSION_1 = {"model": "gpt-test", "temperature": 0.3, "messages": [{"role": "user", "content": "v1 says {{ word }}"}],
             "variables": {"word": "hello"}}
VERSION_2 = {"model": "gpt-test", "messages": [{"role": "system", "content": "v2 is {{ mood }}"},
                                               {"role": "user", "content": "and says {{ word }}"}]}


def test_the_life_cycle(prompts_gateway, backend, tmp_path: Path, request, fake_upstream: FakeUpstream) -> None:
    gw = prompts_gateway(_database(backend, tmp_path, request))
    api = Admin(gw)
    r = api("POST", "", {"name": "Greeter", "description": "says hello", "prompt_id": "greeter"})
    assert r.status_code == 201, r.text
    assert r.json() | {"created_at": None, "updated_at": None} == {
        "id": "greeter", "prompt_id": "greeter", "name": "Greeter", "description": "says hello", "source": "api",
        "deployed_version": None, "latest_version": None, "versions": [], "created_at": None, "updated_at": None}
    assert api("POST", "", {"name": "Again", "prompt_id": "greeter"}).status_code == 409
    # No version deployed yet: a request without `version` is a 404 saying so.
    r = chat(gw, {"prompt": {"prompt_id": "greeter"}})
    assert r.status_code == 404 and "no deployed version" in r.json()["error"]["message"]

    r = api("POST", "greeter/versions/", {**VERSION_1, "deploy": True})
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 1 and r.json()["deployed"] is True and r.json()["temperature"] == 0.3
    assert chat(gw, {"prompt": {"prompt_id": "greeter"}}).status_code == 200
    assert fake_upstream.requests[-1].json == {"model": "gpt-test-upstream", "temperature": 0.3,
                                               "messages": [{"role": "user", "content": "v1 says hello"}]}

    r = api("POST", "greeter/versions", VERSION_2)  # not deployed: the next request still gets v1
    assert r.status_code == 201 and r.json()["version"] == 2 and r.json()["deployed"] is False
    chat(gw, {"prompt": {"prompt_id": "greeter", "variables": {"word": "hi", "mood": "glad"}}})
    assert fake_upstream.requests[-1].json["messages"] == [{"role": "user", "content": "v1 says hi"}]
    chat(gw, {"prompt": {"prompt_id": "greeter", "version": "latest", "variables": {"word": "hi", "mood": "glad"}}})
    assert fake_upstream.requests[-1].json["messages"][0] == {"role": "system", "content": "v2 is glad"}

    r = api("PATCH", "greeter/versions/2/", {"deploy": True})
    assert r.status_code == 200 and r.json()["deployed"] is True
    chat(gw, {"prompt": {"prompt_id": "greeter", "variables": {"word": "yo", "mood": "calm"}}})
    assert fake_upstream.requests[-1].json["messages"] == [{"role": "system", "content": "v2 is calm"},
                                                          {"role": "user", "content": "and says yo"}]

    listed = api("GET", "").json()
    assert listed["count"] == 1 and listed["results"][0]["deployed_version"] == 2 and listed["results"][0]["latest_version"] == 2
    versions = api("GET", "greeter/versions/", key=TEST_KEY).json()["results"]  # reads need any key of the tenant
    assert [(v["version"], v["deployed"]) for v in versions] == [(1, False), (2, True)]
    assert api("GET", "greeter/versions/1/").json()["messages"] == VERSION_1["messages"]
    r = api("PATCH", "greeter/versions/1/", {"messages": []})
    assert r.status_code == 400 and "cannot be changed" in r.json()["error"]["message"]
    assert api("PATCH", "greeter/", {"name": "Greeter 2"}).json()["name"] == "Greeter 2"
    catalog = gw.gateway.service(PromptCatalog)
    infos = gw.call(catalog.list_prompts("acme"))
    assert [(i.prompt_id, i.name, i.deployed_version) for i in infos] == [("greeter", "Greeter 2", 2)]

    assert api("DELETE", "greeter/").status_code == 204
    assert api("GET", "greeter/").status_code == 404
    assert chat(gw, {"prompt": {"prompt_id": "greeter"}}).status_code == 404


def test_bad_input_is_a_400_naming_the_field(prompts_gateway) -> None:
    gw = prompts_gateway()
    api = Admin(gw)
    assert api("POST", "", {"name": "X", "prompt_id": "x"}).status_code == 201
    r = api("POST", "x/versions/", {"messages": [{"role": "robot", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].role"
    r = api("POST", "x/versions/", {"messages": [{"role": "user", "content": "{% if %}"}]})
    assert r.status_code == 400 and "messages[0].content" in r.json()["error"]["message"]
    r = api("POST", "", {"prompt_id": "no name"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "name"
    r = api("POST", "", {"name": "bad", "prompt_id": "has space"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt_id"


def test_tenants_admins_and_file_prompts(prompts_gateway, folder: Path) -> None:
    write(folder, "house.toml", '[[versions]]\nmodel = "gpt-test"\nmessages = [{ role = "user", content = "house" }]\n')
    write(folder, "private.toml", 'tenants = ["globex"]\n[[versions]]\nmessages = [{ role = "user", content = "p" }]\n')
    gw = prompts_gateway()
    api = Admin(gw)
    assert api("POST", "", {"name": "Mine", "prompt_id": "mine"}).status_code == 201
    assert api("POST", "mine/versions/", {**VERSION_1, "deploy": True}).status_code == 201
    # Another tenant's prompt is a 404 (through the API and in a request).
    other = Admin(gw, OTHER_TENANT_KEY)
    assert other("GET", "mine/").status_code == 404
    assert chat(gw, {"prompt": {"prompt_id": "mine"}}, key=OTHER_TENANT_KEY).status_code == 404
    assert {p["prompt_id"] for p in other("GET", "").json()["results"]} == {"house", "private"}
    assert {p["prompt_id"] for p in api("GET", "").json()["results"]} == {"house", "mine"}
    assert chat(gw, {"prompt": {"prompt_id": "private"}}).status_code == 404
    # Changes need an admin key.
    r = api("POST", "", {"name": "Nope"}, key=TEST_KEY)
    assert r.status_code == 403 and "admin" in r.json()["error"]["message"]
    # File prompts are read-only here.
    house = api("GET", "house/").json()
    assert house["source"] == "file" and house["deployed"]["messages"] == [{"role": "user", "content": "house"}]
    for method, path, body in [("PATCH", "house/", {"name": "x"}), ("DELETE", "house/", None),
                               ("POST", "house/versions/", VERSION_1), ("PATCH", "house/versions/1/", {"deploy": True}),
                               ("POST", "", {"name": "x", "prompt_id": "house"})]:
        r = api(method, path, body)
        assert r.status_code == 409 and r.json()["error"]["code"] == "prompt_read_only", (method, path, r.text)


def test_two_replicas_on_one_postgres_schema_see_a_deploy_within_cache_ttl(
        gateway_factory, fake_upstream: FakeUpstream, request, tmp_path: Path) -> None:
    database = _database("postgres", tmp_path, request)
    extra = f'{database}\n[prompts]\ncache_ttl = 30\n[logging]\nspill_dir = "{tmp_path}/spill"\n'
    a, b = gateway_factory(extra, keys=KEYS), gateway_factory(extra, keys=KEYS)
    clock = [1000.0]
    b.gateway.service(PromptCatalog).clock = lambda: clock[0]  # replica b's cache runs on the test's clock
    api = Admin(a)
    assert api("POST", "", {"name": "Shared", "prompt_id": "shared"}).status_code == 201
    assert api("POST", "shared/versions/", {**VERSION_1, "deploy": True}).status_code == 201
    assert chat(b, {"prompt": {"prompt_id": "shared"}}).status_code == 200  # b reads v1 and caches it
    assert api("POST", "shared/versions/", {**VERSION_2, "deploy": True}).status_code == 201  # deployed through a
    variables = {"prompt": {"prompt_id": "shared", "variables": {"mood": "new", "word": "w"}}}
    chat(a, variables)
    assert fake_upstream.requests[-1].json["messages"][0]["content"] == "v2 is new"  # a sees it at once
    clock[0] += 29
    chat(b, variables)
    assert fake_upstream.requests[-1].json["messages"][0]["content"] == "v1 says w"  # b: within its cache_ttl
    clock[0] += 1.5
    chat(b, variables)
    assert fake_upstream.requests[-1].json["messages"][0]["content"] == "v2 is new"  # b: past it, never later


def test_two_gateway_processes_on_postgres(fake_upstream: FakeUpstream, request, tmp_path: Path) -> None:
    database = _database("postgres", tmp_path, request)
    config = tmp_path / "gateway.toml"
    config.write_text(test_config(fake_upstream.url, f'{database}\n[prompts]\ncache_ttl = 0.2\n'
                                                     f'[logging]\nspill_dir = "{tmp_path}/spill"\n', keys=KEYS))
    with GatewayProcess(str(config)) as a, GatewayProcess(str(config)) as b:
        api = Admin(a)
        assert api("POST", "", {"name": "Shared", "prompt_id": "shared"}).status_code == 201
        assert api("POST", "shared/versions/", {**VERSION_1, "deploy": True}).status_code == 201
        assert chat(b, {"prompt": {"prompt_id": "shared"}}).status_code == 200
        assert fake_upstream.requests[-1].json["messages"] == [{"role": "user", "content": "v1 says hello"}]
        assert api("POST", "shared/versions/", {**VERSION_2, "deploy": True}).status_code == 201
        deadline = time.monotonic() + 20  # the bound is 0.2 s; the deadline only keeps a broken build from hanging
        while True:
            r = chat(b, {"prompt": {"prompt_id": "shared", "variables": {"mood": "seen", "word": "w"}}})
            assert r.status_code == 200, r.text
            if fake_upstream.requests[-1].json["messages"][0]["content"] == "v2 is seen" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert fake_upstream.requests[-1].json["messages"][0]["content"] == "v2 is seen"


_NO_JINJA_SCRIPT = """
import sys
import httpx2
from respan_gateway.testing import TEST_KEY, FakeUpstream, GatewayServer, test_config
with FakeUpstream() as upstream, GatewayServer(test_config(upstream.url)) as gateway:
    r = httpx2.post(gateway.base_url + "chat/completions", headers={"authorization": f"Bearer {TEST_KEY}"},
                    json={"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    assert r.status_code == 200, r.text
    before = "jinja2" in sys.modules
    r = httpx2.post(gateway.base_url + "chat/completions", headers={"authorization": f"Bearer {TEST_KEY}"},
                    json={"model": "gpt-test", "prompt": {"prompt_id": "nowhere"}}, timeout=30)
print("RESULT", before, r.status_code, r.json()["error"]["code"])
"""


def test_a_gateway_that_renders_no_prompt_never_imports_jinja() -> None:
    """Jinja costs every worker ~2 MB: it is imported at the first prompt file, template or render,
    not at start; the prompt asked for next (unknown: the plugin's 404) is served as before. A fresh
    interpreter (this one has imported Jinja already)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _NO_JINJA_SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))
    assert result == "RESULT False 404 prompt_not_found", done.stdout
