"""Request credentials, checked from the upstream's side: which key and which base URL reached the fake."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import anthropic
import httpx2
import openai
import pytest

from respan_gateway.testing import TEST_KEY, FakeUpstream, GatewayServer

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def gateway(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> GatewayServer:
    return gateway_factory(f"""
[upstream]
api_base_allowlist = ["127.0.0.1"]

[providers.claude]
type = "anthropic"
base_url = "{fake_upstream.url}"
api_key = "sk-ant-config"

[providers.google]
type = "gemini"
base_url = "{fake_upstream.url}/v1beta"
api_key = "gemini-config"

[providers.azure]
type = "azure"
base_url = "{fake_upstream.url}"
api_key = "azure-config"

[providers.offline]
type = "openai_compatible"
base_url = "http://127.0.0.1:9/v1"
api_key = "sk-offline-config"
""")


def auth_of(fake: FakeUpstream) -> str:
    return fake.requests[-1].headers["authorization"]


def test_config_key_without_request_credentials(gateway: GatewayServer, fake_upstream: FakeUpstream) -> None:
    gateway.openai().chat.completions.create(model="gpt-test", messages=HI)
    assert auth_of(fake_upstream) == "Bearer sk-upstream-secret-key"


def test_precedence_override_then_customer_then_config(gateway: GatewayServer, fake_upstream: FakeUpstream) -> None:
    client = gateway.openai()
    customer = {"fake": {"api_key": "sk-customer"}}
    client.chat.completions.create(model="gpt-test", messages=HI, extra_body={"customer_credentials": customer})
    assert auth_of(fake_upstream) == "Bearer sk-customer"
    client.chat.completions.create(model="gpt-test", messages=HI, extra_body={
        "customer_credentials": customer, "credential_override": {"gpt-test": {"api_key": "sk-override"}}})
    assert auth_of(fake_upstream) == "Bearer sk-override"
    # An override for another model does not apply; the customer's key does.
    client.chat.completions.create(model="gpt-test", messages=HI, extra_body={
        "customer_credentials": customer, "credential_override": {"gpt-4o": {"api_key": "sk-other"}}})
    assert auth_of(fake_upstream) == "Bearer sk-customer"
    # Credentials of another provider do not apply.
    client.chat.completions.create(model="gpt-test", messages=HI, extra_body={"customer_credentials": {"openai": {"api_key": "sk-x"}}})
    assert auth_of(fake_upstream) == "Bearer sk-upstream-secret-key"
    # The deprecated customer_api_keys, by model.
    client.chat.completions.create(model="fake/m1", messages=HI, extra_body={"customer_api_keys": {"fake/m1": "sk-legacy"}})
    assert auth_of(fake_upstream) == "Bearer sk-legacy"


def test_credentials_through_the_header_channel(gateway: GatewayServer, fake_upstream: FakeUpstream) -> None:
    import base64
    import json
    header = base64.b64encode(json.dumps({"customer_credentials": {"fake": {"api_key": "sk-from-header"}}}).encode()).decode()
    gateway.openai().chat.completions.create(model="gpt-test", messages=HI, extra_headers={"X-Data-Respan-Params": header})
    assert auth_of(fake_upstream) == "Bearer sk-from-header"


def test_weighted_list_with_available_and_exclude_models(gateway: GatewayServer, fake_upstream: FakeUpstream) -> None:
    client = gateway.openai()
    deployments = [
        {"credentials": {"fake": {"api_key": "sk-dep-a"}}, "weight": 1, "exclude_models": ["fake/big"]},
        {"credentials": {"fake": {"api_key": "sk-dep-b"}}, "weight": 1},
        {"credentials": {"fake": {"api_key": "sk-dep-c"}}, "weight": 1, "available_models": ["fake/small"]},
    ]
    seen: Counter[str] = Counter()
    for _ in range(30):
        client.chat.completions.create(model="fake/big", messages=HI, extra_body={"customer_credentials": deployments})
        seen[auth_of(fake_upstream)] += 1
    assert set(seen) == {"Bearer sk-dep-b"}  # a excludes the model, c serves only fake/small
    seen.clear()
    for _ in range(60):
        client.chat.completions.create(model="fake/small", messages=HI, extra_body={"customer_credentials": deployments})
        seen[auth_of(fake_upstream)] += 1
    assert set(seen) == {"Bearer sk-dep-a", "Bearer sk-dep-b", "Bearer sk-dep-c"}
    assert all(n >= 5 for n in seen.values()), seen  # about 20 each


def test_api_base_must_be_allowed(gateway: GatewayServer, fake_upstream: FakeUpstream) -> None:
    client = gateway.openai()
    fake_upstream.reset()
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="offline/m", messages=HI, extra_body={
            "credential_override": {"offline/m": {"api_key": "sk-secret-override", "api_base": "http://10.0.0.5/v1"}}})
    assert "10.0.0.5" in info.value.message and "api_base_allowlist" in info.value.message
    assert "sk-secret-override" not in str(info.value.body)
    assert fake_upstream.requests == []  # nothing went upstream
    # An allowed host: the request goes there (the configured base URL is unreachable).
    client.chat.completions.create(model="offline/m", messages=HI, extra_body={
        "credential_override": {"offline/m": {"api_key": "sk-good", "api_base": f"{fake_upstream.url}/v1"}}})
    assert auth_of(fake_upstream) == "Bearer sk-good"


@pytest.mark.parametrize(("creds", "words"), [
    ({"api_key": "sk-ok", "api_base": "http://127.0.0.1:99999/v1"}, "port"),
    ({"api_key": "sk-ok", "api_base": "http://127.0.0.1:http/v1"}, "port"),
    ({"api_key": "sk-ok", "api_base": "http://user:pw@127.0.0.1/v1"}, "user name or password"),
    ({"api_key": "sk-ok", "api_base": "http://127.0.0.1/v1\tx"}, "no space, tab or line break"),
    ({"api_key": "sk-ok", "api_base": "http://127.0.0.1/v1\r\nHost: evil"}, "no space, tab or line break"),
    ({"api_key": "sk-ok", "api_base": "http://[::1/v1"}, "http(s) URL"),
    ({"api_key": "sk-a\r\nx-injected: 1"}, "printable ASCII"),
    ({"api_key": "sk-caf\u00e9"}, "printable ASCII"),
])
@pytest.mark.parametrize("param", ["credential_override", "customer_credentials"])
def test_bad_request_credentials_are_a_400_naming_the_param(gateway: GatewayServer, fake_upstream: FakeUpstream,
                                                           creds: dict, words: str, param: str) -> None:
    value = {"fake/m": creds} if param == "credential_override" else {"fake": creds}
    response = httpx2.post(gateway.base_url + "chat/completions", headers={"authorization": f"Bearer {TEST_KEY}"},
                           json={"model": "fake/m", "messages": HI, param: value}, timeout=10)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"] and f"`{param}`" in error["message"]
    assert fake_upstream.requests == []
    assert gateway.record(response.headers["x-respan-log-id"])["status_code"] == 400


@pytest.mark.parametrize(("entry", "allowed", "refused"), [
    # A URL entry admits its scheme, host and port (the scheme's default port when it names none).
    ("{url}", "{url}/v1", "https://127.0.0.1:{port}/v1"),
    ("{url}/", "{url}/v1", "http://127.0.0.1:1/v1"),
    ("127.0.0.1:{port}", "{url}/v1", "http://127.0.0.1:1/v1"),
    ("http://localhost", "http://localhost/v1", "{url}/v1"),
])
def test_allowlist_entries_as_urls(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream,
                                   entry: str, allowed: str, refused: str) -> None:
    port = fake_upstream.url.rsplit(":", 1)[1]
    fill = {"url": fake_upstream.url, "port": port}
    gw = gateway_factory(f'[upstream]\napi_base_allowlist = ["{entry.format(**fill)}"]\n')
    client = gw.openai()
    if "localhost" not in allowed:
        client.chat.completions.create(model="fake/m", messages=HI, extra_body={
            "credential_override": {"fake/m": {"api_key": "sk-url-entry", "api_base": allowed.format(**fill)}}})
        assert auth_of(fake_upstream) == "Bearer sk-url-entry"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="fake/m", messages=HI, extra_body={
            "credential_override": {"fake/m": {"api_key": "sk-url-entry", "api_base": refused.format(**fill)}}})
    assert "api_base_allowlist" in info.value.message


@pytest.mark.parametrize("entry", ["https://api.example.com/v1", "ftp://files.example.com", "example.com:99999",
                                   "user@example.com", "exa mple.com"])
def test_allowlist_entry_that_cannot_match_stops_the_start(fake_upstream: FakeUpstream, entry: str) -> None:
    from respan_gateway.config import ConfigError
    from respan_gateway.testing import test_config

    with pytest.raises(ConfigError) as info:
        GatewayServer(test_config(fake_upstream.url, f'[upstream]\napi_base_allowlist = ["ok.example.com", "{entry}"]\n'))
    assert "`upstream.api_base_allowlist[1]`" in str(info.value) and entry in str(info.value)


def test_keys_never_in_errors_or_plugin_listing(gateway: GatewayServer) -> None:
    client = gateway.openai()
    with pytest.raises(openai.APIStatusError) as info:  # offline provider: connection refused
        client.chat.completions.create(model="offline/m", messages=HI, extra_body={"customer_credentials": {"offline": {"api_key": "sk-cust-secret"}}})
    assert info.value.status_code == 502
    assert "sk-cust-secret" not in str(info.value.body) and "sk-offline-config" not in str(info.value.body)
    listing = httpx2.get(gateway.url + "/-/plugins", timeout=10).text
    for secret in ("sk-offline-config", "sk-ant-config", "gemini-config", "azure-config", "sk-upstream-secret-key"):
        assert secret not in listing
    assert "credentials" in listing


def test_anthropic_native_endpoint_with_metadata_params(gateway: GatewayServer, fake_upstream: FakeUpstream) -> None:
    client = anthropic.Anthropic(base_url=gateway.url + "/api/anthropic", api_key=TEST_KEY, max_retries=0)
    client.messages.create(model="claude/claude-sonnet-4-5", max_tokens=10, messages=HI,
                           metadata={"user_id": "u", "respan_params": {"customer_credentials": {"anthropic": {"api_key": "sk-ant-customer"}}}})  # type: ignore[typeddict-unknown-key]
    sent = fake_upstream.requests[-1]
    assert sent.headers["x-api-key"] == "sk-ant-customer"
    assert sent.json["metadata"] == {"user_id": "u"}


def test_gemini_and_azure_provider_aliases(gateway: GatewayServer, fake_upstream: FakeUpstream) -> None:
    client = gateway.openai()
    client.chat.completions.create(model="google/gemini-2.5-flash", messages=HI,
                                   extra_body={"customer_credentials": {"google_gemini_ai": {"api_key": "gemini-customer"}}})
    assert fake_upstream.requests[-1].headers["x-goog-api-key"] == "gemini-customer"
    client.chat.completions.create(model="azure/dep1", messages=HI, extra_body={
        "customer_credentials": {"azure_openai": {"api_key": "azure-customer", "api_version": "2025-04-01-preview"}}})
    sent = fake_upstream.requests[-1]
    assert sent.headers["api-key"] == "azure-customer" and sent.query == "api-version=2025-04-01-preview"
    client.chat.completions.create(model="azure/dep1", messages=HI, extra_body={
        "credential_override": {"azure/dep1": {"api_key": "azure-override", "api_base": fake_upstream.url, "api_version": "2024-06-01"}}})
    sent = fake_upstream.requests[-1]
    assert sent.headers["api-key"] == "azure-override" and sent.query == "api-version=2024-06-01"


def test_bad_credential_shapes_are_400(gateway: GatewayServer) -> None:
    client = gateway.openai()
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-test", messages=HI, extra_body={"customer_credentials": {"fake": "sk-plain-string"}})
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-test", messages=HI, extra_body={"customer_credentials": [{"weight": 1}]})
