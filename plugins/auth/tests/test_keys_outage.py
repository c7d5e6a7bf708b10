"""The key database unreachable (a real outage: PostgreSQL behind a TCP proxy the test shuts): keys a
process knows keep working, unknown ones get a 503 that says why, and all is well once it is back."""

from __future__ import annotations

import time

import httpx2
import openai

from respan_gateway.testing import TEST_KEY, TcpProxy

from keys_kit import KeysClient, auth_config

MESSAGES = [{"role": "user", "content": "hi"}]


def status(gateway, key: str) -> tuple[int, dict]:
    try:
        gateway.openai(api_key=key).chat.completions.create(model="mock/m", messages=MESSAGES)
    except openai.APIStatusError as exc:
        return exc.status_code, exc.body or {}
    return 200, {}


def test_known_keys_work_and_unknown_keys_get_503_while_the_database_is_down(
        postgres_schema, fake_upstream, gateway_factory, tmp_path) -> None:
    proxy = TcpProxy(("127.0.0.1", 5432))
    proxy.open()
    try:
        database = (f'\n[database]\nurl = "postgresql://postgres@127.0.0.1:{proxy.port}/test"\n'
                    f'schema = "{postgres_schema}_keys_outage"\nconnect_timeout = 0.5\ncommand_timeout = 1.0\n'
                    f'pool_size = 2\n[logging]\nspill_dir = "{tmp_path}/spill"\nflush_interval = 0.05\n')
        # One process that asks the database on every request (TTL 0), one that remembers for a minute.
        always = gateway_factory(config=auth_config(fake_upstream, database, ttl=0))
        cached = gateway_factory(config=auth_config(fake_upstream, database, ttl=60))
        api = KeysClient(cached)
        known = api.create(name="known")["key"]
        unknown = api.create(name="never-used-before-the-outage")["key"]
        bad = known[:-6] + "AAAAAA"  # well formed, but no such key
        assert status(always, known)[0] == 200 and status(cached, known)[0] == 200
        assert status(cached, bad)[0] == 401  # remembered as unknown

        proxy.shut()
        # A key this process has seen keeps working, even one whose lookup is past its TTL.
        assert status(always, known)[0] == 200
        assert status(cached, known)[0] == 200
        # A key it cannot check: 503 (not 401: the key may well be good), saying why.
        code, body = status(always, unknown)
        assert code == 503, body
        assert body["code"] == "auth_store_unavailable" and "database is unreachable" in body["message"]
        assert unknown not in str(body)
        # Recently seen as unknown: still 401, without asking the database.
        assert status(cached, bad)[0] == 401
        # Config keys and tokens that are not database keys never need the database.
        assert status(always, TEST_KEY)[0] == 200 and status(always, "sk-not-a-key")[0] == 401
        # The keys API says the same.
        down = KeysClient(always).request("GET")
        assert down.status_code == 503 and down.json()["error"]["code"] == "auth_store_unavailable"

        proxy.open()
        deadline = time.monotonic() + 15
        while status(always, unknown)[0] != 200:
            assert time.monotonic() < deadline, "the key still fails after the database came back"
            time.sleep(0.1)
        assert status(cached, known)[0] == 200
        while httpx2.get(always.url + "/readyz").status_code != 200:  # the logs spilled meanwhile replayed
            assert time.monotonic() < deadline, httpx2.get(always.url + "/readyz").text
            time.sleep(0.1)
    finally:
        proxy.shut()
