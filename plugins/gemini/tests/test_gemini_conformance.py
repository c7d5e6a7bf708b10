"""The provider kit's conformance suite, run against the bundled Gemini adapter."""

from respan_gateway.testing.conformance import ProviderConformance


class TestGeminiConformance(ProviderConformance):
    provider_id = "gemini"
    provider_toml = """
[providers.gemini]
type = "gemini"
base_url = "{upstream}/v1beta"
api_key = "gemini-conformance"
"""
