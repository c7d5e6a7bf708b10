"""ExampleAI against the gateway's provider kit: the conformance suite, plus what is ExampleAI's own."""

from __future__ import annotations

import httpx2

from respan_gateway.testing import GatewayServer
from respan_gateway.testing.conformance import ProviderConformance

PROVIDER = """
[providers.exampleai]
type = "example"
base_url = "{upstream}/v1"
api_key = "ex-test-key"
region = "us"
"""


class TestExampleProvider(ProviderConformance):
    provider_id = "exampleai"
    provider_toml = PROVIDER

    def test_key_region_and_dropped_fields_reach_the_upstream(self, client, conformance_upstream) -> None:
        client.chat.completions.create(model="exampleai/fake-model", messages=[{"role": "user", "content": "hi"}],
                                       user="u1", parallel_tool_calls=False, temperature=0.5)
        sent = conformance_upstream.requests[-1]
        assert sent.path == "/v1/chat/completions"
        assert sent.headers["x-example-key"] == "ex-test-key" and sent.headers["x-example-region"] == "us"
        assert "authorization" not in sent.headers
        assert sent.json == {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5}

    def test_installed_by_pip_and_listed(self, conformance_gateway: GatewayServer) -> None:
        plugins = httpx2.get(conformance_gateway.url + "/-/plugins", timeout=10).json()
        assert "example" in plugins["provider_types"]
        assert any(p["package"] == "respan-provider-example" for p in plugins["plugins"])
