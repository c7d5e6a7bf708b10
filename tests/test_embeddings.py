"""POST /api/embeddings through the gateway with the real openai SDK (OpenAI-compatible upstream)."""

from __future__ import annotations

import base64
import struct

import httpx2
import openai
import pytest

from respan_gateway.testing import TEST_KEY, FakeUpstream, GatewayServer
from respan_gateway.testing.fake_upstream import _vector


def test_sdk_default_asks_base64_and_gets_floats(gateway: GatewayServer, fake_upstream: FakeUpstream) -> None:
    # The SDK's default call asks for base64; its strict mode rejects base64 answers, so lenient here.
    client = openai.OpenAI(base_url=gateway.base_url, api_key=TEST_KEY, max_retries=0)
    result = client.embeddings.create(model="fake/text-embedding-3-small", input=["hello world", "bye"], dimensions=6)
    sent = fake_upstream.requests[-1]
    assert sent.path == "/v1/embeddings"
    assert sent.json == {"model": "text-embedding-3-small", "input": ["hello world", "bye"], "dimensions": 6, "encoding_format": "base64"}
    assert sent.headers["authorization"] == "Bearer sk-upstream-secret-key"
    assert [d.embedding for d in result.data] == [_vector("hello world", 6), _vector("bye", 6)]
    assert result.usage.prompt_tokens == 3


def test_float_encoding(gateway: GatewayServer) -> None:
    client = gateway.openai(_strict_response_validation=True)
    result = client.embeddings.create(model="fake/text-embedding-3-small", input="hello", encoding_format="float")
    assert result.data[0].embedding == _vector("hello", 8)
    assert result.object == "list" and result.model == "text-embedding-3-small"


def test_raw_base64_answer_is_a_string(gateway: GatewayServer) -> None:
    response = httpx2.post(gateway.base_url + "embeddings", headers={"authorization": f"Bearer {TEST_KEY}"},
                           json={"model": "fake/e", "input": "hello", "encoding_format": "base64", "dimensions": 3}, timeout=30)
    assert response.status_code == 200
    encoded = response.json()["data"][0]["embedding"]
    assert list(struct.unpack("<3f", base64.b64decode(encoded))) == _vector("hello", 3)
    assert response.headers["x-respan-gateway-request-id"]


def test_respan_params_are_stripped(gateway: GatewayServer, fake_upstream: FakeUpstream) -> None:
    client = gateway.openai()
    client.embeddings.create(model="fake/e", input="hi", encoding_format="float",
                             extra_body={"customer_identifier": "c1", "metadata": {"a": "b"}, "disable_log": True})
    assert set(fake_upstream.requests[-1].json) == {"model", "input", "encoding_format"}


def test_errors(gateway: GatewayServer) -> None:
    client = gateway.openai()
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-embedding-model", input="hi")
    with pytest.raises(openai.InternalServerError):
        client.embeddings.create(model="fake/fake-error-503", input="hi")
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="mock/anything", input="hi")
    assert "does not serve embeddings" in info.value.message
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway.base_url, api_key="nope", max_retries=0).embeddings.create(model="fake/e", input="hi")
