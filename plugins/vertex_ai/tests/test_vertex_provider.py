"""OpenAI chat through the gateway to Vertex AI: the real openai SDK over a real socket, the fake upstream
speaking Vertex's Gemini and Claude (rawPredict) wire formats and Google's OAuth token endpoint, which
google-auth is pointed at through the ``token_uri`` of a service-account key made for each test."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from respan_gateway.testing import FakeUpstream, GatewayServer
from respan_gateway.testing.fake_clouds import make_service_account

USER = [{"role": "user", "content": "What is the weather in Paris?"}]
ANSWER = "Hello from the fake upstream!"
WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather for a city",
                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
}
PNG = "iVBORw0KGgo="
PREFIX = "/v1/projects/fake-project/locations/us-central1/publishers"


def vertex_toml(upstream: str, credentials: str, extra: str = "") -> str:
    return f"""
[providers.vertex_ai]
type = "vertex_ai"
project = "fake-project"
location = "us-central1"
base_url = "{upstream}/v1"
{credentials}
{extra}
"""


@pytest.fixture
def service_account(fake_upstream: FakeUpstream, tmp_path: Path) -> tuple[dict[str, Any], Path]:
    info, public_pem = make_service_account(f"{fake_upstream.url}/token")
    fake_upstream.service_accounts[info["client_email"]] = public_pem  # the fake checks the JWT's signature too
    path = tmp_path / "service-account.json"
    path.write_text(json.dumps(info))
    return info, path


@pytest.fixture
def gateway(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream,
            service_account: tuple[dict[str, Any], Path]) -> GatewayServer:
    return gateway_factory(vertex_toml(fake_upstream.url, f'credentials = "{service_account[1]}"'))


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_the_bearer_token_comes_from_the_service_account_key(gateway: GatewayServer, fake_upstream: FakeUpstream,
                                                           service_account: tuple[dict[str, Any], Path]) -> None:
    info, _ = service_account
    answer = gateway.openai(_strict_response_validation=True).chat.completions.create(model="vertex_ai/gemini-2.5-flash", messages=USER)
    assert answer.choices[0].message.content == ANSWER
    (grant,) = fake_upstream.token_requests
    # The JWT google-auth sent is signed with the key of the test's service account...
    head, payload, signature = grant["assertion"].split(".")
    key = serialization.load_pem_private_key(info["private_key"].encode(), None).public_key()
    key.verify(_b64(signature), f"{head}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())  # raises if not
    claims = json.loads(_b64(payload))
    assert claims["iss"] == info["client_email"] and claims["aud"] == "https://oauth2.googleapis.com/token"
    assert claims["scope"] == "https://www.googleapis.com/auth/cloud-platform"
    # ...and the token it got back is the one Vertex received.
    request = fake_upstream.requests[-1]
    assert request.path == f"{PREFIX}/google/models/gemini-2.5-flash:generateContent"
    assert request.headers["authorization"] == f"Bearer {next(iter(fake_upstream.oauth_tokens))}"
    assert request.json["contents"] == [{"role": "user", "parts": [{"text": USER[0]["content"]}]}]


def test_token_is_cached_and_refreshed_once_on_expiry_for_20_concurrent_requests(gateway: GatewayServer, fake_upstream: FakeUpstream) -> None:
    client = gateway.openai()
    for _ in range(3):
        client.chat.completions.create(model="vertex_ai/gemini-2.5-flash", messages=USER)
    assert len(fake_upstream.token_requests) == 1, "one token for as long as it is valid"
    adapter = gateway.gateway.providers["vertex_ai"]
    adapter.clock = lambda: time.time() + 3600 - 60  # a minute before expiry: inside the refresh margin
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: client.chat.completions.create(model="vertex_ai/gemini-2.5-flash", messages=USER), range(20)))
    assert all(a.choices[0].message.content == ANSWER for a in answers)
    assert len(fake_upstream.token_requests) == 2, "20 waiting requests, one refresh"
    tokens = {r.headers["authorization"] for r in fake_upstream.requests[-20:]}
    assert len(tokens) == 1 and tokens != {fake_upstream.requests[1].headers["authorization"]}


def test_claude_on_vertex_pinned_with_the_route_provider_header(gateway: GatewayServer, fake_upstream: FakeUpstream) -> None:
    client = gateway.openai(_strict_response_validation=True)
    raw = client.chat.completions.with_raw_response.create(
        model="claude-sonnet-4-5-20250929", messages=[{"role": "system", "content": "Be terse."}, *USER], max_tokens=100,
        extra_headers={"X-Respan-Route-Provider": "vertex_ai"},
        extra_body={"extra_headers": {"x-fake-scenario": "cache-read-1000,cache-write-200"}})
    answer = raw.parse()
    assert answer.choices[0].message.content == ANSWER
    request = fake_upstream.requests[-1]
    assert request.path == f"{PREFIX}/anthropic/models/claude-sonnet-4-5@20250929:rawPredict"
    body = request.json
    assert body["anthropic_version"] == "vertex-2023-10-16" and "model" not in body
    assert body["system"] == [{"type": "text", "text": "Be terse."}] and body["max_tokens"] == 100
    words = 2 + 6
    assert answer.usage.prompt_tokens == words + 1200 and answer.usage.prompt_tokens_details.cached_tokens == 1000
    record = gateway.record(raw.headers["x-respan-log-id"])
    assert (record["model"], record["provider_id"]) == ("vertex_ai/claude-sonnet-4-5-20250929", "vertex_ai")
    assert record["cost"] == pytest.approx((words * 3.0 + 5 * 15.0 + 1000 * 0.3 + 200 * 3.75) / 1e6)


def test_claude_stream_tools_and_images(gateway: GatewayServer, fake_upstream: FakeUpstream) -> None:
    client = gateway.openai(_strict_response_validation=True)
    image = [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                          {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}]
    chunks = list(client.chat.completions.create(model="vertex_ai/claude-haiku-4-5", messages=image, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    assert chunks[-1].usage.completion_tokens == 5
    request = fake_upstream.requests[-1]
    assert request.path == f"{PREFIX}/anthropic/models/claude-haiku-4-5@20251001:streamRawPredict"
    assert request.json["stream"] is True
    assert request.json["messages"][0]["content"][1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    with client.chat.completions.stream(model="vertex_ai/claude-haiku-4-5", messages=USER, tools=[WEATHER_TOOL]) as stream:
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert final.choices[0].finish_reason == "tool_calls" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert fake_upstream.requests[-1].json["tools"][0]["name"] == "get_weather"


def test_gemini_stream_image_tools_usage_and_cost(gateway: GatewayServer, fake_upstream: FakeUpstream) -> None:
    client = gateway.openai(_strict_response_validation=True)
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                             {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}]
    raw = client.chat.completions.with_raw_response.create(
        model="vertex_ai/gemini-2.5-pro", messages=messages, stream=True, stream_options={"include_usage": True},
        extra_body={"extra_headers": {"x-fake-scenario": "cache-read-100"}})
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    request = fake_upstream.requests[-1]
    assert request.path == f"{PREFIX}/google/models/gemini-2.5-pro:streamGenerateContent" and request.query == "alt=sse"
    assert request.json["contents"][0]["parts"][1] == {"inlineData": {"mimeType": "image/png", "data": PNG}}
    usage = chunks[-1].usage
    assert usage.prompt_tokens == 3 + 100 and usage.prompt_tokens_details.cached_tokens == 100
    record = gateway.record(raw.headers["x-respan-log-id"])
    # Gemini 2.5 Pro prices per 1M: 1.25 input, 10 output, 0.31 cached input.
    assert record["cost"] == pytest.approx((3 * 1.25 + 100 * 0.31 + 5 * 10.0) / 1e6)
    answer = client.chat.completions.create(model="vertex_ai/gemini-2.5-pro", messages=USER, tools=[WEATHER_TOOL])
    assert answer.choices[0].finish_reason == "tool_calls"
    assert fake_upstream.requests[-1].json["tools"] == [{"functionDeclarations": [
        {"name": "get_weather", "description": "Weather for a city", "parametersJsonSchema": WEATHER_TOOL["function"]["parameters"]}]}]


def test_a_given_access_token(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    fake_upstream.accept_token("ya29.given-token-abcdefgh")
    gw = gateway_factory(vertex_toml(fake_upstream.url, 'access_token = "ya29.given-token-abcdefgh"'))
    gw.openai().chat.completions.create(model="vertex_ai/gemini-2.5-flash", messages=USER)
    assert fake_upstream.requests[-1].headers["authorization"] == "Bearer ya29.given-token-abcdefgh"
    assert not fake_upstream.token_requests
    # Refused upstream (expired): a 401 naming the provider, the token in no message.
    fake_upstream.static_tokens.clear()
    with pytest.raises(openai.AuthenticationError) as info:
        gw.openai().chat.completions.create(model="vertex_ai/gemini-2.5-flash", messages=USER)
    assert "`vertex_ai`" in info.value.body["message"] and "ya29.given" not in json.dumps(info.value.body)


def test_express_mode_api_key(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory(f"""
[providers.vertex_ai]
type = "vertex_ai"
base_url = "{fake_upstream.url}/v1"
api_key = "AQ.express-key-abcdefgh"
""")
    gw.openai().chat.completions.create(model="vertex_ai/gemini-2.5-flash", messages=USER)
    request = fake_upstream.requests[-1]
    assert request.path == "/v1/publishers/google/models/gemini-2.5-flash:generateContent"
    assert request.headers["x-goog-api-key"] == "AQ.express-key-abcdefgh" and "express-key" not in request.query
    with pytest.raises(openai.BadRequestError):  # Claude needs OAuth credentials
        gw.openai().chat.completions.create(model="vertex_ai/claude-haiku-4-5", messages=USER)


def test_request_service_account_project_and_location(gateway: GatewayServer, fake_upstream: FakeUpstream) -> None:
    info, public_pem = make_service_account(f"{fake_upstream.url}/token", email="customer@other.iam.gserviceaccount.com", project="other")
    fake_upstream.service_accounts[info["client_email"]] = public_pem
    creds = {"google_vertex_ai": {"vertex_ai_credentials": info, "vertex_ai_location": "europe-west4"}}
    for _ in range(2):
        gateway.openai().chat.completions.create(model="vertex_ai/gemini-2.5-flash", messages=USER, extra_body={"customer_credentials": creds})
    assert fake_upstream.requests[-1].path == "/v1/projects/other/locations/europe-west4/publishers/google/models/gemini-2.5-flash:generateContent"
    assert [g["claims"]["iss"] for g in fake_upstream.token_requests] == ["customer@other.iam.gserviceaccount.com"]


def test_a_refused_service_account_is_a_401(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    info, _ = make_service_account(f"{fake_upstream.url}/token")
    _, other_public = make_service_account(f"{fake_upstream.url}/token")
    fake_upstream.service_accounts[info["client_email"]] = other_public  # Google knows another key for the account
    gw = gateway_factory(vertex_toml(fake_upstream.url, f"credentials = '''{json.dumps(info)}'''"))
    for stream in (False, True):
        with pytest.raises(openai.AuthenticationError) as info_:
            gw.openai().chat.completions.create(model="vertex_ai/gemini-2.5-flash", messages=USER, stream=stream)
        body = json.dumps(info_.value.body)
        assert "`vertex_ai`" in body and "invalid_grant" in body and "PRIVATE KEY" not in body
    assert not any(r.path.startswith("/v1/projects") for r in fake_upstream.requests)


def test_a_token_vertex_refuses_is_dropped_and_replaced(gateway: GatewayServer, fake_upstream: FakeUpstream) -> None:
    client = gateway.openai()
    client.chat.completions.create(model="vertex_ai/gemini-2.5-flash", messages=USER)
    fake_upstream.revoke_tokens()  # e.g. revoked upstream before its expiry
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="vertex_ai/gemini-2.5-flash", messages=USER)
    assert client.chat.completions.create(model="vertex_ai/gemini-2.5-flash", messages=USER).choices[0].message.content == ANSWER
    assert len(fake_upstream.token_requests) == 2


def test_errors_keep_google_status_and_message(gateway: GatewayServer) -> None:
    client = gateway.openai()
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="vertex_ai/fake-error-429", messages=USER, extra_body={"disable_fallback": True})
    assert info.value.body["code"] == "RESOURCE_EXHAUSTED"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="vertex_ai/anthropic/fake-error-404", messages=USER)


def test_service_account_key_never_reaches_a_message(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream,
                                                     service_account: tuple[dict[str, Any], Path]) -> None:
    info, _ = service_account
    gw = gateway_factory(vertex_toml(fake_upstream.url, f"credentials = '''{json.dumps(info)}'''"))
    gw.openai().chat.completions.create(model="vertex_ai/gemini-2.5-flash", messages=USER)  # a token is cached
    token = next(iter(fake_upstream.oauth_tokens))
    with pytest.raises(openai.APIStatusError) as error:
        gw.openai().chat.completions.create(model="vertex_ai/fake-error-500", messages=USER,
                                            extra_body={"extra_headers": {"x-fake-scenario": "error-500,echo-headers"}})
    body = json.dumps(error.value.body)
    assert "authorization" in body.lower() and token not in body


def test_native_anthropic_endpoint_over_claude_on_vertex(gateway: GatewayServer, fake_upstream: FakeUpstream) -> None:
    import anthropic

    from respan_gateway.testing import TEST_KEY

    client = anthropic.Anthropic(base_url=gateway.url + "/api/anthropic", api_key=TEST_KEY, max_retries=0)
    message = client.messages.create(model="claude-sonnet-4-5-20250929", max_tokens=64, messages=USER,
                                     extra_headers={"X-Respan-Route-Provider": "vertex_ai"})
    assert message.content[0].text == ANSWER and message.stop_reason == "end_turn"
    request = fake_upstream.requests[-1]
    assert request.path == f"{PREFIX}/anthropic/models/claude-sonnet-4-5@20250929:rawPredict"
    assert request.json["anthropic_version"] == "vertex-2023-10-16" and "model" not in request.json
    with client.messages.stream(model="vertex_ai/claude-haiku-4-5", max_tokens=64, messages=USER) as stream:
        assert stream.get_final_text() == ANSWER
    assert fake_upstream.requests[-1].path.endswith("claude-haiku-4-5@20251001:streamRawPredict")


def test_throttled_claude_on_vertex_falls_back_to_claude_on_bedrock(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream,
                                                                    service_account: tuple[dict[str, Any], Path]) -> None:
    from respan_gateway.testing.fake_clouds import FAKE_AWS_KEY_ID, FAKE_AWS_SECRET

    gw = gateway_factory(vertex_toml(fake_upstream.url, f'credentials = "{service_account[1]}"') + f"""
[providers.bedrock]
type = "bedrock"
region = "us-east-1"
base_url = "{fake_upstream.url}"
aws_access_key_id = "{FAKE_AWS_KEY_ID}"
aws_secret_access_key = "{FAKE_AWS_SECRET}"
""")
    raw = gw.openai().chat.completions.with_raw_response.create(
        model="vertex_ai/anthropic/fake-error-429", messages=USER, extra_body={"fallback_models": ["bedrock/claude-sonnet-4-5-20250929"]})
    assert raw.parse().choices[0].message.content == ANSWER
    paths = [r.raw_path for r in fake_upstream.requests if r.raw_path != "/token"]
    assert paths[0] == f"{PREFIX}/anthropic/models/fake-error-429:rawPredict"
    assert paths[-1] == "/model/anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse"
    assert gw.record(raw.headers["x-respan-log-id"])["provider_id"] == "bedrock"
