"""OpenAI chat through the gateway to Bedrock's Converse API: the real openai SDK over a real socket, the fake
upstream speaking Converse / ConverseStream (binary event stream) and checking every SigV4 signature by
recomputing it with botocore from the request as it arrived."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import openai
import pytest

from respan_gateway.testing import FakeUpstream, GatewayServer
from respan_gateway.testing.fake_clouds import FAKE_AWS_KEY_ID, FAKE_AWS_SECRET, sigv4_signature

WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather for a city",
                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
}
PNG = "iVBORw0KGgo="
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
CLAUDE = "anthropic.claude-sonnet-4-5-20250929-v1:0"


def bedrock_toml(upstream: str, provider_id: str = "bedrock", region: str = "us-east-1", secret: str = FAKE_AWS_SECRET,
                 extra: str = "") -> str:
    return f"""
[providers.{provider_id}]
type = "bedrock"
region = "{region}"
base_url = "{upstream}"
aws_access_key_id = "{FAKE_AWS_KEY_ID}"
aws_secret_access_key = "{secret}"
{extra}
"""


@pytest.fixture
def gateway(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> GatewayServer:
    return gateway_factory(bedrock_toml(fake_upstream.url))


@pytest.fixture
def client(gateway: GatewayServer) -> openai.OpenAI:
    return gateway.openai(_strict_response_validation=True)


def test_aws_sigv4_known_answer_vector() -> None:
    # AWS's published Signature V4 test suite, "get-vanilla" and "post-vanilla" (credentials AKIDEXAMPLE):
    # the fake's checker (botocore's signer, the adapter's too) computes AWS's own answers.
    secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    headers = {"host": "example.amazonaws.com", "x-amz-date": "20150830T123600Z"}
    for method, expected in (("GET", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
                             ("POST", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b")):
        assert sigv4_signature(method, "https://example.amazonaws.com/", headers, b"", "AKIDEXAMPLE", secret,
                               "us-east-1", "service", "20150830T123600Z") == expected


def test_text_system_image_and_inference_config(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    answer = client.chat.completions.create(
        model=f"bedrock/{CLAUDE}",
        messages=[{"role": "system", "content": "Be terse."},
                  {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}],
        max_tokens=256, temperature=0.2, top_p=0.9, stop=["###"], extra_body={"top_k": 5},
    )
    assert answer.choices[0].message.content == "Hello from the fake upstream!" and answer.choices[0].finish_reason == "stop"
    request = fake_upstream.requests[-1]
    # The model id is one path segment, its ':' percent-encoded, signed and sent byte for byte alike.
    assert request.raw_path == "/model/anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse"
    assert request.headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={FAKE_AWS_KEY_ID}/")
    assert "/us-east-1/bedrock/aws4_request" in request.headers["authorization"]
    assert fake_upstream.signed_requests[-1]["region"] == "us-east-1"  # the fake recomputed the signature
    assert FAKE_AWS_SECRET not in json.dumps(request.headers)
    body = request.json
    assert body["system"] == [{"text": "Be terse."}]
    assert body["messages"] == [{"role": "user", "content": [
        {"text": "What is this?"}, {"image": {"format": "png", "source": {"bytes": PNG}}}]}]
    assert body["inferenceConfig"] == {"maxTokens": 256, "temperature": 0.2, "topP": 0.9, "stopSequences": ["###"]}
    assert body["additionalModelRequestFields"] == {"top_k": 5}
    assert "model" not in body


def test_stream_is_relayed_event_by_event(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    chunks = list(client.chat.completions.create(model="bedrock/amazon.nova-lite-v1:0", messages=USER, stream=True,
                                                 stream_options={"include_usage": True},
                                                 extra_body={"extra_headers": {"x-fake-scenario": "chunks-7"}}))
    assert fake_upstream.requests[-1].raw_path == "/model/amazon.nova-lite-v1%3A0/converse-stream"
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) == 7, "each contentBlockDelta is one chunk, nothing buffered"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 7


def test_tools_and_tool_results(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    first = client.chat.completions.create(model=f"bedrock/{CLAUDE}", messages=USER, tools=[WEATHER_TOOL], tool_choice="required")
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls" and json.loads(call.function.arguments) == {"city": "Paris"}
    config = fake_upstream.requests[-1].json["toolConfig"]
    assert config == {"tools": [{"toolSpec": {"name": "get_weather", "description": "Weather for a city",
                                              "inputSchema": {"json": WEATHER_TOOL["function"]["parameters"]}}}],
                      "toolChoice": {"any": {}}}
    messages = [*USER, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'}]
    second = client.chat.completions.create(model=f"bedrock/{CLAUDE}", messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].message.content == "Hello from the fake upstream!"
    turns = fake_upstream.requests[-1].json["messages"]
    assert turns[1] == {"role": "assistant", "content": [{"toolUse": {"toolUseId": call.id, "name": "get_weather", "input": {"city": "Paris"}}}]}
    assert turns[2] == {"role": "user", "content": [{"toolResult": {"toolUseId": call.id, "content": [{"text": '{"temp_c": 21}'}]}}]}


@pytest.mark.parametrize(("reason", "expected"), [("max_tokens", "length"), ("guardrail_intervened", "content_filter"),
                                                  ("stop_sequence", "stop"), ("content_filtered", "content_filter")])
def test_stop_reasons(client: openai.OpenAI, reason: str, expected: str) -> None:
    answer = client.chat.completions.create(model="bedrock/fake-model", messages=USER, extra_body={"extra_headers": {"x-fake-scenario": f"finish-{reason}"}})
    assert answer.choices[0].finish_reason == expected


def test_usage_with_cache_tokens_and_cost_on_the_log_record(gateway: GatewayServer) -> None:
    client = gateway.openai(_strict_response_validation=True)
    raw = client.chat.completions.with_raw_response.create(
        model="bedrock/claude-sonnet-4-5-20250929", messages=USER, extra_body={"extra_headers": {"x-fake-scenario": "cache-read-1000,cache-write-200"}})
    usage = raw.parse().usage
    words = 6  # "What is the weather in Paris?"
    assert usage.prompt_tokens == words + 1200 and usage.completion_tokens == 5
    assert usage.prompt_tokens_details.cached_tokens == 1000
    record = gateway.record(raw.headers["x-respan-log-id"])
    assert record["model"] == "bedrock/claude-sonnet-4-5-20250929" and record["provider_id"] == "bedrock"
    # Sonnet 4.5 prices per 1M: 3 input, 15 output, 0.30 cache read, 3.75 cache write.
    expected = (words * 3.0 + 5 * 15.0 + 1000 * 0.3 + 200 * 3.75) / 1e6
    assert record["cost"] == pytest.approx(expected)
    assert (record["prompt_tokens"], record["completion_tokens"]) == (words + 1200, 5)


def test_inference_profile_prefixes_foundation_model_ids(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory(bedrock_toml(fake_upstream.url, extra='inference_profile = "us"'))
    gw.openai().chat.completions.create(model="bedrock/claude-haiku-4-5-20251001", messages=USER)
    assert fake_upstream.requests[-1].raw_path == "/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/converse"
    gw.openai().chat.completions.create(model="bedrock/eu.meta.llama3-2-1b-instruct-v1:0", messages=USER)
    assert fake_upstream.requests[-1].raw_path == "/model/eu.meta.llama3-2-1b-instruct-v1%3A0/converse"  # has one already


def test_throttling_is_retried_then_falls_back(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory(bedrock_toml(fake_upstream.url) + bedrock_toml(fake_upstream.url, "bedrock_eu", "eu-west-1"))
    client = gw.openai()
    # Throttled once, then served: the reliability stage retried the same model.
    key = uuid.uuid4().hex
    answer = client.chat.completions.create(model="bedrock/fake-error-429", messages=USER,
                                            extra_body={"extra_headers": {"x-fake-fail-times": "1", "x-fake-fail-key": key}})
    assert answer.choices[0].message.content == "Hello from the fake upstream!"
    throttled = [r for r in fake_upstream.requests if r.headers.get("x-fake-fail-key") == key]
    assert len(throttled) == 2
    # Always throttled in us-east-1: the fallback in eu-west-1 answers.
    fake_upstream.reset()
    raw = client.chat.completions.with_raw_response.create(model="bedrock/fake-error-429", messages=USER,
                                                            extra_body={"fallback_models": ["bedrock_eu/fake-model"]})
    assert raw.parse().choices[0].message.content == "Hello from the fake upstream!"
    assert [s["region"] for s in fake_upstream.signed_requests][-1] == "eu-west-1"
    record = gw.record(raw.headers["x-respan-log-id"])
    assert record["provider_id"] == "bedrock_eu"


def test_throttling_reaches_the_client_as_a_429(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="bedrock/fake-error-429", messages=USER, extra_body={"disable_fallback": True})
    assert info.value.status_code == 429 and info.value.body["code"] == "ThrottlingException"


@pytest.mark.parametrize("scenario", ["bad-secret", "unknown-key"])
def test_refused_credentials_are_a_401_naming_the_provider(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream,
                                                          scenario: str) -> None:
    secret = "not-the-secret-0123456789abcdefghijklmnop"
    toml = bedrock_toml(fake_upstream.url, secret=secret)
    if scenario == "unknown-key":
        toml = toml.replace(FAKE_AWS_KEY_ID, "AKIAUNKNOWNKEY000000")
    gw = gateway_factory(toml)
    for stream in (False, True):
        with pytest.raises(openai.AuthenticationError) as info:
            gw.openai().chat.completions.create(model="bedrock/fake-model", messages=USER, stream=stream)
        message = info.value.body["message"]
        assert "`bedrock`" in message and ("InvalidSignature" in message or "UnrecognizedClient" in message)
        assert secret not in message


def test_request_credentials_and_region(gateway: GatewayServer, fake_upstream: FakeUpstream) -> None:
    fake_upstream.aws_keys["AKIACUSTOMER00000001"] = "customer-secret-abcdefghijklmnop"
    creds = {"aws_bedrock": {"aws_access_key_id": "AKIACUSTOMER00000001", "aws_secret_access_key": "customer-secret-abcdefghijklmnop",
                             "aws_region_name": "eu-central-1"}}
    gateway.openai().chat.completions.create(model="bedrock/fake-model", messages=USER, extra_body={"customer_credentials": creds})
    assert fake_upstream.signed_requests[-1] == {**fake_upstream.signed_requests[-1], "key_id": "AKIACUSTOMER00000001", "region": "eu-central-1"}
    # A wrong per-request secret: 401, and the secret appears nowhere.
    creds["aws_bedrock"]["aws_secret_access_key"] = "wrong-secret-abcdefghijklmnopqrs"
    with pytest.raises(openai.AuthenticationError) as info:
        gateway.openai().chat.completions.create(model="bedrock/fake-model", messages=USER, extra_body={"customer_credentials": creds})
    assert "wrong-secret" not in json.dumps(info.value.body)


def test_bedrock_api_key_is_a_bearer_token(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory(f"""
[providers.bedrock]
type = "bedrock"
region = "us-west-2"
base_url = "{fake_upstream.url}"
api_key = "bedrock-api-key-abcdefghijkl"
""")
    gw.openai().chat.completions.create(model="bedrock/fake-model", messages=USER)
    assert fake_upstream.requests[-1].headers["authorization"] == "Bearer bedrock-api-key-abcdefghijkl"


def test_credentials_from_the_environment(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream,
                                          monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": FAKE_AWS_KEY_ID, "AWS_SECRET_ACCESS_KEY": FAKE_AWS_SECRET, "AWS_SESSION_TOKEN": "env-session-token",
                        "AWS_REGION": "ap-southeast-2", "AWS_CONFIG_FILE": str(tmp_path / "none"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)
    gw = gateway_factory(f"""
[providers.bedrock]
type = "bedrock"
base_url = "{fake_upstream.url}"
""")
    gw.openai().chat.completions.create(model="bedrock/fake-model", messages=USER)
    request = fake_upstream.requests[-1]
    assert request.headers["x-amz-security-token"] == "env-session-token"
    signed = fake_upstream.signed_requests[-1]
    assert signed["region"] == "ap-southeast-2" and "x-amz-security-token" in signed["signed_headers"]


def test_no_credentials_anywhere_is_a_401(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream,
                                          monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                        "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)
    gw = gateway_factory(f'[providers.bedrock]\ntype = "bedrock"\nregion = "us-east-1"\nbase_url = "{fake_upstream.url}"\n')
    with pytest.raises(openai.AuthenticationError) as info:
        gw.openai().chat.completions.create(model="bedrock/fake-model", messages=USER)
    assert info.value.body["code"] == "missing_provider_key" and "`bedrock`" in info.value.body["message"]


def test_untranslatable_requests_are_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="bedrock/fake-model", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    assert "data URL" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="bedrock/fake-model", messages=USER, response_format={"type": "json_object"})
