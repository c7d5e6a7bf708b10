"""Database keys through the keys API, used with the real SDKs, on SQLite and on PostgreSQL."""

from __future__ import annotations

import time

import anthropic
import httpx2
import openai
import pytest

from respan_gateway.testing import TEST_KEY
from respan_plugins.auth.store import KEY_FORMAT

from keys_kit import ADMIN_KEY, OTHER_ADMIN_KEY, KeysClient, me

MESSAGES = [{"role": "user", "content": "hi"}]


def wait_until(check, timeout: float = 10.0) -> bool:
    """Polls ``check`` until it holds (a bound for an effect that is due after a cache TTL)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def chat(gateway, key: str) -> int:
    """The status a chat request with ``key`` gets, through the openai SDK."""
    try:
        gateway.openai(api_key=key).chat.completions.create(model="mock/m", messages=MESSAGES)
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


CLAUDE = """
[providers.claude]
type = "anthropic"
base_url = "{url}"
api_key = "sk-ant-config-key"
"""


def test_a_created_key_works_with_the_sdks_and_is_shown_once(keyed_gateway, fake_upstream) -> None:
    gw = keyed_gateway(extra=CLAUDE.format(url=fake_upstream.url))
    api = KeysClient(gw)
    created = api.create(name="backend", environment="test", limits={"spend_per_day": 5.0})
    key = created["key"]
    assert KEY_FORMAT.match(key) and key.startswith(created["prefix"] + ".")
    assert created["tenant"] == "acme" and created["environment"] == "test" and created["status"] == "active"
    assert created["admin"] is False and created["revoked_at"] is None and created["expires_at"] is None
    assert created["limits"]["spend_per_day"] == 5.0 and created["limits"]["requests_per_minute"] is None

    answer = gw.openai(api_key=key).chat.completions.create(model="mock/m", messages=MESSAGES)
    assert answer.choices[0].message.content
    # The Anthropic SDK as Claude Code configures it: the key in x-api-key.
    claude = anthropic.Anthropic(base_url=gw.url + "/api/anthropic", api_key=None, max_retries=0,
                                 default_headers={"x-api-key": key})
    assert claude.messages.create(model="claude/claude-sonnet-4-5", max_tokens=16, messages=MESSAGES).content

    # Never shown again: not in the list, not in the key's own page.
    listing = api.request("GET")
    assert listing.status_code == 200 and key not in listing.text and created["key"][-40:] not in listing.text
    assert [k["id"] for k in listing.json()["results"]] == [created["id"]]
    assert "key" not in listing.json()["results"][0]
    one = api.request("GET", f"{created['id']}/")
    assert one.status_code == 200 and "key" not in one.json() and key[-40:] not in one.text
    assert one.json()["prefix"] == created["prefix"] and one.json()["name"] == "backend"

    # The principal it gives: its id, tenant, environment and limits.
    seen = me(gw, key).json()
    assert seen["key_id"] == created["id"] and seen["tenant"] == "acme" and seen["environment"] == "test"
    assert seen["limits"]["spend_per_day"] == 5.0 and seen["admin"] is False


def test_a_key_created_on_one_gateway_works_on_another(keyed_gateway) -> None:
    first, second = keyed_gateway(), keyed_gateway()  # two replicas on one database
    created = KeysClient(first).create(name="shared")
    assert chat(second, created["key"]) == 200
    assert me(second, created["key"]).json()["key_id"] == created["id"]


def test_a_revoke_stops_the_key_on_every_gateway_within_the_cache_ttl(keyed_gateway) -> None:
    ttl = 0.3
    first, second = keyed_gateway(ttl=ttl), keyed_gateway(ttl=ttl)
    api = KeysClient(first)
    created = api.create(name="to-revoke")
    key = created["key"]
    assert chat(first, key) == 200 and chat(second, key) == 200  # both processes have it cached

    revoked = api.request("DELETE", f"{created['id']}/")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked" and revoked.json()["revoked_at"]
    assert chat(first, key) == 401  # the process that revoked it: at once
    # The other: once its cached lookup is older than key_cache_ttl (polled, bounded well above it).
    assert wait_until(lambda: chat(second, key) == 401, timeout=ttl + 5)
    with pytest.raises(openai.AuthenticationError) as info:
        second.openai(api_key=key).chat.completions.create(model="mock/m", messages=MESSAGES)
    assert "invalid or expired" in info.value.message and key not in info.value.response.text

    # Revoked keys leave the list (kept for the record), and a second revoke changes nothing.
    assert api.request("GET").json()["results"] == []
    assert [k["id"] for k in api.request("GET", params={"include_revoked": "true"}).json()["results"]] == [created["id"]]
    again = api.request("DELETE", f"{created['id']}/")
    assert again.status_code == 200 and again.json()["revoked_at"] == revoked.json()["revoked_at"]


def test_an_expired_key_is_refused(keyed_gateway) -> None:
    gw = keyed_gateway()
    api = KeysClient(gw)
    in_an_hour = time.time() + 3600
    created = api.create(name="temporary", expires_at=in_an_hour)
    assert created["expires_at"] and created["status"] == "active"
    assert chat(gw, created["key"]) == 200
    # Time moves on (the auth middleware's clock, moved by the test): past the expiry, the key is refused
    # at once, cached or not.
    dict(gw.gateway.middlewares)["auth"].clock = lambda: time.time() + 7200
    assert chat(gw, created["key"]) == 401
    assert api.request("GET", f"{created['id']}/").json()["status"] == "expired"
    # An expiry given as ISO 8601 text is read the same way.
    iso = api.create(expires_at="2999-01-01T00:00:00Z")
    assert iso["expires_at"] == "2999-01-01T00:00:00Z"


def test_patched_limits_reach_the_principal(keyed_gateway) -> None:
    ttl = 0.3
    first, second = keyed_gateway(ttl=ttl), keyed_gateway(ttl=ttl)
    api = KeysClient(first)
    created = api.create(name="limited", limits={"spend_per_day": 5.0, "requests_per_minute": 60})
    key = created["key"]
    assert me(second, key).json()["limits"]["requests_per_minute"] == 60  # cached on the second one

    patched = api.request("PATCH", f"{created['id']}/", json={
        "name": "limited-more", "environment": "test",
        "limits": {"requests_per_minute": 10, "spend_per_day": None, "tokens_per_month": 1_000_000}})
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body["name"] == "limited-more" and body["environment"] == "test"
    assert body["limits"]["requests_per_minute"] == 10 and body["limits"]["spend_per_day"] is None
    assert body["limits"]["tokens_per_month"] == 1_000_000
    assert api.request("GET", f"{created['id']}/").json()["limits"] == body["limits"]
    assert me(first, key).json()["limits"] == body["limits"]  # the process that changed it: at once
    assert wait_until(lambda: me(second, key).json()["limits"] == body["limits"], timeout=ttl + 5)
    assert me(second, key).json()["environment"] == "test"

    cleared = api.request("PATCH", f"{created['id']}/", json={"limits": None, "expires_at": time.time() + 60})
    assert all(v is None for v in cleared.json()["limits"].values()) and cleared.json()["expires_at"]
    assert all(v is None for v in me(first, key).json()["limits"].values())


def test_the_keys_api_needs_an_admin_key(keyed_gateway) -> None:
    gw = keyed_gateway()
    api = KeysClient(gw)
    created = api.create(name="plain")
    for key in (TEST_KEY, created["key"]):  # a config key and a database key, neither admin
        client = KeysClient(gw, key)
        for method, path in (("GET", ""), ("POST", ""), ("GET", f"{created['id']}/"),
                             ("PATCH", f"{created['id']}/"), ("DELETE", f"{created['id']}/")):
            r = client.request(method, path, json={} if method in ("POST", "PATCH") else None)
            assert r.status_code == 403, (method, path, r.text)
            assert r.json()["error"]["type"] == "permission_error" and r.json()["error"]["code"] == "admin_key_required"
        assert me(gw, key).status_code == 200  # its own principal: any key
    assert KeysClient(gw, "sk-nobody").request("GET").status_code == 401
    assert httpx2.get(gw.url + "/api/keys/").json()["error"]["code"] == "invalid_api_key"
    # A database key created as an admin may use the API, for its tenant.
    admin = api.create(name="second-admin", admin=True)
    assert KeysClient(gw, admin["key"]).request("GET").status_code == 200


def test_another_tenants_key_is_a_404(keyed_gateway) -> None:
    gw = keyed_gateway()
    acme = KeysClient(gw).create(name="acme-app")
    globex = KeysClient(gw, OTHER_ADMIN_KEY)
    for method in ("GET", "PATCH", "DELETE"):
        r = globex.request(method, f"{acme['id']}/", json={"name": "stolen"} if method == "PATCH" else None)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (method, r.text)
    assert globex.request("GET").json()["results"] == []
    assert KeysClient(gw).request("GET", "no-such-key/").status_code == 404
    assert chat(gw, acme["key"]) == 200  # untouched by the other tenant's attempts
    assert KeysClient(gw).request("GET", f"{acme['id']}/").json()["name"] == "acme-app"


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"name": "x", "tenant": "globex"}, None, "unknown field `tenant`"),
    ({"environment": "staging"}, "environment", "Invalid enum value 'staging'"),
    ({"expires_at": "next tuesday"}, "expires_at", "not an ISO 8601"),
    ({"expires_at": "2001-01-01"}, "expires_at", "in the future"),
    ({"limits": {"spend_per_week": 1}}, "limits", "spend_per_week"),
    ({"limits": {"spend_per_day": -1}}, "limits", ">= 0"),
    ({"limits": {"requests_per_minute": 1.5}}, "limits", "`limits.requests_per_minute`: Expected `int"),
    ({"name": "n" * 201}, "name", "at most 200"),
])
def test_bad_input_is_a_400_naming_the_field(keyed_gateway, body, param, words) -> None:
    gw = keyed_gateway(ttl=1)
    api = KeysClient(gw)
    r = api.request("POST", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and words in error["message"] and error["param"] == param
    created = api.create()
    patch = api.request("PATCH", f"{created['id']}/", json=body)
    # The same checks on a change (the tenant of a key cannot change either).
    assert patch.status_code == 400 and words in patch.json()["error"]["message"]
    assert api.request("POST", content=b"{not json").status_code == 400


def test_config_keys_carry_their_limits(keyed_gateway) -> None:
    gw = keyed_gateway(keys='{ key = "sk-limited-config-key", tenant = "acme", name = "capped", '
                            'limits = { spend_per_day = 5.0, requests_per_minute = 30 } }')
    seen = me(gw, "sk-limited-config-key").json()
    assert seen["key_id"] == "capped" and seen["limits"]["spend_per_day"] == 5.0
    assert seen["limits"]["requests_per_minute"] == 30 and seen["limits"]["max_spend"] is None
    assert all(v is None for v in me(gw, TEST_KEY).json()["limits"].values())
