"""The provider kit's conformance suite, run against the bundled OpenAI adapter."""

from respan_gateway.testing.conformance import ProviderConformance


class TestOpenAIConformance(ProviderConformance):
    provider_id = "oai"
    provider_toml = """
[providers.oai]
type = "openai"
base_url = "{upstream}/v1"
api_key = "sk-openai-conformance"
"""
