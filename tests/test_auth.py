"""Gateway API keys: Bearer or x-api-key, plain or hashed in the config, expiry; 401 otherwise."""

from __future__ import annotations

import hashlib

import httpx2
import openai
import pytest

from respan_gateway.testing import TEST_KEY, FakeUpstream, GatewayServer

MESSAGES = [{"role": "user", "content": "hi"}]
HASHED_KEY = "sk-only-its-hash-is-in-the-config"


@pytest.fixture
def keyed(gateway_factory) -> GatewayServer:
    digest = hashlib.sha256(HASHED_KEY.encode()).hexdigest()
    return gateway_factory(keys=(
        f'{{ key_sha256 = "{digest}", tenant = "hashed-tenant" }}, '
        '{ key = "sk-expired", expires_at = "2001-01-01" }, '
        '{ key = "sk-future", expires_at = "2999-01-01T00:00:00+00:00" }'
    ))


@pytest.mark.parametrize(("api_key", "words"), [("sk-wrong", "invalid or expired"), ("sk-expired", "invalid or expired")])
def test_bad_keys_are_401(keyed: GatewayServer, fake_upstream: FakeUpstream, api_key: str, words: str) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        keyed.openai(api_key=api_key).chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert words in info.value.message
    assert api_key not in info.value.response.text  # the key is never echoed
    assert info.value.code == "invalid_api_key"
    assert fake_upstream.requests == []


def test_missing_key_and_bad_scheme_are_401(gateway: GatewayServer) -> None:
    url = gateway.base_url + "chat/completions"
    body = {"model": "mock/m", "messages": MESSAGES}
    missing = httpx2.post(url, json=body)
    assert missing.status_code == 401 and "no API key" in missing.json()["error"]["message"]
    basic = httpx2.post(url, json=body, headers={"authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status_code == 401 and "Bearer" in basic.json()["error"]["message"]


def test_good_keys(keyed: GatewayServer) -> None:
    for key in (TEST_KEY, HASHED_KEY, "sk-future"):
        assert keyed.openai(api_key=key).chat.completions.create(model="mock/m", messages=MESSAGES).choices
    response = httpx2.post(keyed.base_url + "chat/completions", json={"model": "mock/m", "messages": MESSAGES},
                           headers={"x-api-key": HASHED_KEY})
    assert response.status_code == 200


def test_models_list_needs_a_key(gateway: GatewayServer) -> None:
    assert httpx2.get(gateway.base_url + "models").status_code == 401
    assert httpx2.get(gateway.base_url + "models", headers={"authorization": f"Bearer {TEST_KEY}"}).status_code == 200


def test_health_needs_no_key(gateway: GatewayServer) -> None:
    assert httpx2.get(gateway.url + "/healthz").json() == {"status": "ok"}
    ready = httpx2.get(gateway.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
