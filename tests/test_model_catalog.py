"""The shipped model catalog: merged under the config's [models], served at GET /api/models/public."""

from __future__ import annotations

from collections.abc import Callable

import httpx2
import openai
import pytest

from respan_gateway.model_catalog import shipped_models
from respan_gateway.testing import FakeUpstream, GatewayServer


@pytest.fixture
def gateway(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> GatewayServer:
    return gateway_factory(f"""
[providers.oai]
type = "openai"
base_url = "{fake_upstream.url}/v1"
api_key = "sk-oai"

[providers.anthropic]
base_url = "{fake_upstream.url}"
api_key = "sk-ant"

[models."gpt-4o"]
provider = "oai"
input_cost = 9.0
output_cost = 99.0
""")


def test_shipped_catalog_is_complete_and_priced() -> None:
    models = shipped_models()
    for slug in ("gpt-4o-mini", "gpt-4.1", "claude-sonnet-4-5-20250929", "claude-haiku-4-5", "gemini-2.5-flash", "text-embedding-3-small", "gemini-embedding-001"):
        assert slug in models, slug
    assert {m.provider for m in models.values()} == {"openai", "anthropic", "gemini", "vertex_ai", "bedrock"}
    for slug, entry in models.items():
        assert entry.input_cost > 0 and entry.context_window, slug
        if entry.mode == "chat":
            assert entry.output_cost > 0 and "streaming" in entry.capabilities, slug
        if entry.provider == "anthropic" or "claude" in slug:
            assert entry.cache_write_cost == pytest.approx(entry.input_cost * 1.25), slug
            assert entry.cache_read_cost == pytest.approx(entry.input_cost * 0.1), slug


def test_bare_names_resolve_to_the_configured_provider_of_their_type(gateway: GatewayServer, fake_upstream: FakeUpstream) -> None:
    client = gateway.openai()
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    sent = fake_upstream.requests[-1]
    assert sent.path == "/v1/chat/completions" and sent.headers["authorization"] == "Bearer sk-oai"
    assert sent.json["model"] == "gpt-4o-mini"
    client.chat.completions.create(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}])
    sent = fake_upstream.requests[-1]
    assert sent.path == "/v1/messages" and sent.json["model"] == "claude-sonnet-4-5"
    # No Gemini provider configured: its shipped models are simply unavailable.
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}])
    ids = {m.id for m in client.models.list()}
    assert {"gpt-4o-mini", "claude-sonnet-4-5", "gpt-test"} <= ids and "gemini-2.5-flash" not in ids


def test_public_listing_without_auth_and_config_wins(gateway: GatewayServer) -> None:
    response = httpx2.get(gateway.url + "/api/models/public", timeout=10)
    assert response.status_code == 200
    models = {m["model_name"]: m for m in response.json()["models"]}
    assert models["gpt-4o"]["input_cost"] == 9.0 and models["gpt-4o"]["output_cost"] == 99.0  # the config's entry
    assert models["gpt-4o"]["max_context_window"] is None  # replaced whole, not merged
    haiku = models["claude-haiku-4-5"]
    assert haiku["provider"] == {"provider_id": "anthropic", "provider_name": "anthropic", "type": "anthropic"}
    assert (haiku["input_cost"], haiku["output_cost"], haiku["cache_read_cost"], haiku["cache_write_cost"]) == (1.0, 5.0, 0.1, 1.25)
    assert haiku["max_context_window"] == 200000 and haiku["function_call"] and haiku["image_support"]
    assert models["text-embedding-3-small"]["mode"] == "embedding"
    assert "gemini-2.5-flash" not in models
    assert "sk-oai" not in response.text and "sk-ant" not in response.text
