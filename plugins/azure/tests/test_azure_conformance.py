"""The provider kit's conformance suite, run against the bundled Azure OpenAI adapter."""

from respan_gateway.testing.conformance import ProviderConformance


class TestAzureConformance(ProviderConformance):
    provider_id = "azure"
    provider_toml = """
[providers.azure]
type = "azure"
base_url = "{upstream}"
api_key = "azure-conformance"
"""
