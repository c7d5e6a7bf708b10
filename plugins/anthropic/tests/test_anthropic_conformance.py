"""The provider kit's conformance suite, run against the bundled Anthropic adapter."""

from respan_gateway.testing.conformance import ProviderConformance


class TestAnthropicConformance(ProviderConformance):
    provider_id = "claude"
    provider_toml = """
[providers.claude]
type = "anthropic"
base_url = "{upstream}"
api_key = "sk-ant-conformance"
"""
