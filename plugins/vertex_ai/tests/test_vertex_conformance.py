"""The provider kit's conformance suite, run against the bundled Vertex AI adapter: Gemini and Claude, with
a service-account key made for the test and exchanged at the fake's token endpoint."""

import json

from respan_gateway.testing.conformance import ProviderConformance
from respan_gateway.testing.fake_clouds import make_service_account

SERVICE_ACCOUNT, _ = make_service_account("{upstream}/token")
TOML = f"""
[providers.vertex_ai]
type = "vertex_ai"
project = "fake-project"
location = "us-central1"
base_url = "{{upstream}}/v1"
credentials = '''{json.dumps(SERVICE_ACCOUNT)}'''
"""


class TestVertexGeminiConformance(ProviderConformance):
    provider_id = "vertex_ai"
    provider_toml = TOML


class TestVertexClaudeConformance(ProviderConformance):
    provider_id = "vertex_ai"
    provider_toml = TOML

    def slug(self, scenario: str = "model") -> str:
        return f"vertex_ai/anthropic/fake-{scenario}"
