"""The provider kit's conformance suite, run against the bundled Bedrock adapter (Converse, SigV4 checked
by the fake, streams in AWS's binary event-stream framing)."""

from respan_gateway.testing.conformance import ProviderConformance
from respan_gateway.testing.fake_clouds import FAKE_AWS_KEY_ID, FAKE_AWS_SECRET


class TestBedrockConformance(ProviderConformance):
    provider_id = "bedrock"
    provider_toml = f"""
[providers.bedrock]
type = "bedrock"
region = "us-east-1"
base_url = "{{upstream}}"
aws_access_key_id = "{FAKE_AWS_KEY_ID}"
aws_secret_access_key = "{FAKE_AWS_SECRET}"
"""
