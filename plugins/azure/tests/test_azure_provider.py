"""Azure OpenAI deployments through the gateway: the real openai SDK, a fake upstream speaking Azure's
routes (deployment in the path, api-version, api-key header) over real sockets."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from respan_gateway.testing import TEST_KEY, FakeUpstream, GatewayServer

WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
PNG = "iVBORw0KGgo="


@pytest.fixture
def gateway(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> GatewayServer:
    return gateway_factory(f"""
[providers.azure]
type = "azure"
base_url = "{fake_upstream.url}"
api_key = "azure-resource-key"

[providers.azure.deployments.eu-gpt4o]
deployment = "gpt-4o-eu"
api_key = "azure-eu-key"
api_version = "2025-01-01-preview"

[models."team-gpt"]
provider = "azure"
upstream_model = "prod-gpt4o"
""")


@pytest.fixture
def client(gateway: GatewayServer) -> openai.OpenAI:
    return gateway.openai(_strict_response_validation=True)


def test_text_system_and_image(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    answer = client.chat.completions.create(model="azure/my-deploy", messages=[
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": [{"type": "text", "text": "What?"}, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
    ])
    assert answer.choices[0].message.content == "Hello from the fake upstream!"
    sent = fake_upstream.requests[-1]
    assert sent.path == "/openai/deployments/my-deploy/chat/completions"
    assert sent.query == "api-version=2024-10-21"
    assert sent.headers["api-key"] == "azure-resource-key"
    assert "authorization" not in sent.headers
    assert sent.json["model"] == "my-deploy"
    assert sent.json["messages"][0] == {"role": "system", "content": "Be terse."}
    assert sent.json["messages"][1]["content"][1]["image_url"]["url"].endswith(PNG)


def test_per_deployment_config_and_catalog_slug(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    client.chat.completions.create(model="azure/eu-gpt4o", messages=[{"role": "user", "content": "hi"}])
    sent = fake_upstream.requests[-1]
    assert sent.path == "/openai/deployments/gpt-4o-eu/chat/completions"
    assert sent.query == "api-version=2025-01-01-preview"
    assert sent.headers["api-key"] == "azure-eu-key"
    client.chat.completions.create(model="team-gpt", messages=[{"role": "user", "content": "hi"}])
    assert fake_upstream.requests[-1].path == "/openai/deployments/prod-gpt4o/chat/completions"


def test_tools_round_trip_and_stream_helper(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    first = client.chat.completions.create(model="azure/my-deploy", messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER_TOOL])
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls" and json.loads(call.function.arguments) == {"city": "Paris"}
    messages = [{"role": "user", "content": "Weather?"}, first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "21C"}]
    client.chat.completions.create(model="azure/my-deploy", messages=messages, tools=[WEATHER_TOOL], tool_choice="none")
    assert fake_upstream.requests[-1].json["messages"][2] == {"role": "tool", "tool_call_id": call.id, "content": "21C"}
    with client.chat.completions.stream(model="azure/my-deploy", messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER_TOOL]) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.tool_calls[0].function.arguments == '{"city":"Paris"}'


def test_stream_drops_the_prompt_filter_preamble(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="azure/fake-cache-read-4", messages=[{"role": "user", "content": "hi"}],
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].object == "chat.completion.chunk" and chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens_details.cached_tokens == 4


@pytest.mark.parametrize("finish", ["stop", "length", "tool_calls", "content_filter"])
def test_stop_reasons_pass_through(client: openai.OpenAI, finish: str) -> None:
    answer = client.chat.completions.create(model=f"azure/fake-finish-{finish}", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].finish_reason == finish


def test_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="azure/fake-error-404", messages=[{"role": "user", "content": "hi"}])
    assert "deployment for this resource does not exist" in info.value.message
    assert info.value.code == "DeploymentNotFound"
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="azure/fake-error-429", messages=[{"role": "user", "content": "hi"}])
    stream = client.chat.completions.create(model="azure/fake-midstream-error", messages=[{"role": "user", "content": "hi"}], stream=True)
    with pytest.raises(openai.APIError):
        list(stream)


def test_embeddings_sdk_default_base64(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    lenient = openai.OpenAI(base_url=client.base_url, api_key=client.api_key, max_retries=0)
    result = lenient.embeddings.create(model="azure/embed-small", input=["hello world", "bye"], dimensions=4)
    sent = fake_upstream.requests[-1]
    assert sent.path == "/openai/deployments/embed-small/embeddings" and sent.query == "api-version=2024-10-21"
    assert sent.json["encoding_format"] == "base64" and sent.json["dimensions"] == 4
    assert [len(d.embedding) for d in result.data] == [4, 4]
    assert all(isinstance(x, float) for x in result.data[0].embedding)


WITHOUT_OPENAI = """
import sys
from respan_gateway.testing import TEST_KEY, GatewayServer

with GatewayServer(open(sys.argv[1]).read()) as gateway:
    answer = gateway.openai().chat.completions.create(model="azure/my-deploy", messages=[{"role": "user", "content": "hi"}])
    print(answer.choices[0].message.content)
    print("respan_plugins.openai" in sys.modules)
"""


def test_azure_works_with_the_openai_plugin_disabled(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    # Azure subclasses the core's OpenAI wire adapter: disabling `openai` never imports that plugin.
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[plugins]
disabled = ["openai"]

[auth]
keys = [{{ key = "{TEST_KEY}", tenant = "acme" }}]

[database]
url = "sqlite:///{tmp_path}/respan.sqlite3"

[providers.azure]
type = "azure"
base_url = "{fake_upstream.url}"
api_key = "azure-resource-key"
""")
    done = subprocess.run([sys.executable, "-c", WITHOUT_OPENAI, str(config)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["Hello from the fake upstream!", "False"]
    assert fake_upstream.requests[-1].path == "/openai/deployments/my-deploy/chat/completions"
