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
