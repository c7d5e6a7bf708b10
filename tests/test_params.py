"""Respan params: the three channels, their precedence and merge, legacy names, and bad input.

What the params stage decided is seen two ways: from the upstream's side (`extra_headers` is a Respan
param whose headers reach the provider), and through the testing kit's CallRecorder, a plugin
registered the way a third-party plugin would be, which keeps the call whose typed params later
stages read.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx2
import openai
import pytest

from respan_gateway.testing import TEST_KEY, CallRecorder, FakeUpstream, GatewayServer

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def probed(gateway_factory) -> tuple[GatewayServer, CallRecorder]:
    probe = CallRecorder()
    return gateway_factory(plugins=(probe,)), probe


def b64(obj: Any) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


def test_each_channel_alone(probed: tuple[GatewayServer, CallRecorder]) -> None:
    gateway, probe = probed
    client = gateway.openai()
    client.chat.completions.create(model="gpt-test", messages=MESSAGES, extra_body={"customer_identifier": "top"})
    client.chat.completions.create(model="gpt-test", messages=MESSAGES, extra_body={"respan_params": {"customer_identifier": "nested"}})
    client.chat.completions.create(model="gpt-test", messages=MESSAGES, extra_body={"keywordsai_params": {"customer_identifier": "legacy"}})
    client.chat.completions.create(model="gpt-test", messages=MESSAGES, extra_headers={"X-Data-Respan-Params": b64({"customer_identifier": "header"})})
    client.chat.completions.create(model="gpt-test", messages=MESSAGES, extra_headers={"X-Data-Keywordsai-Params": b64({"customer_identifier": "legacy-header"})})
    client.chat.completions.create(model="gpt-test", messages=MESSAGES, extra_headers={"X-Data-Respan-Params": json.dumps({"customer_identifier": "raw-json"})})
    client.chat.completions.create(model="gpt-test", messages=MESSAGES, extra_headers={"X-Respan-Customer-Identifier": "id-header"})
    assert [c.params.customer_identifier for c in probe.calls] == [
        "top", "nested", "legacy", "header", "legacy-header", "raw-json", "id-header"]


def test_precedence_top_level_over_respan_params_over_header(probed: tuple[GatewayServer, CallRecorder], fake_upstream: FakeUpstream) -> None:
    gateway, probe = probed
    client = gateway.openai()
    header = {"X-Data-Respan-Params": b64({"extra_headers": {"x-channel": "header"}, "thread_identifier": "h", "custom_identifier": "h"})}
    client.chat.completions.create(model="gpt-test", messages=MESSAGES, extra_headers=header, extra_body={
        "respan_params": {"extra_headers": {"x-channel": "respan_params"}, "thread_identifier": "rp"},
        "extra_headers": {"x-channel": "top-level"},
    })
    assert fake_upstream.requests[-1].headers["x-channel"] == "top-level"
    client.chat.completions.create(model="gpt-test", messages=MESSAGES, extra_headers=header, extra_body={
        "respan_params": {"extra_headers": {"x-channel": "respan_params"}}})
    assert fake_upstream.requests[-1].headers["x-channel"] == "respan_params"
    client.chat.completions.create(model="gpt-test", messages=MESSAGES, extra_headers=header)
    assert fake_upstream.requests[-1].headers["x-channel"] == "header"
    first = probe.calls[0].params
    assert (first.thread_identifier, first.custom_identifier) == ("rp", "h")


def test_respan_params_wins_over_keywordsai_params(probed: tuple[GatewayServer, CallRecorder]) -> None:
    gateway, probe = probed
    gateway.openai().chat.completions.create(model="gpt-test", messages=MESSAGES, extra_body={
        "keywordsai_params": {"customer_identifier": "old", "thread_identifier": "only-legacy"},
        "respan_params": {"customer_identifier": "new"},
    })
    assert (probe.calls[0].params.customer_identifier, probe.calls[0].params.thread_identifier) == ("new", "only-legacy")


def test_object_params_merge_key_by_key(probed: tuple[GatewayServer, CallRecorder]) -> None:
    gateway, probe = probed
    gateway.openai().chat.completions.create(
        model="gpt-test",
        messages=MESSAGES,
        extra_headers={"X-Data-Respan-Params": b64({"metadata": {"a": "header", "b": "header", "c": "header"},
                                                     "retry_params": {"num_retries": 5}})},
        extra_body={
            "respan_params": {"metadata": {"b": "nested", "c": "nested"}, "retry_params": {"retry_after": 0.5}},
            "metadata": {"c": "top", "d": 4},
            # Not an object param: replaced whole by the higher channel.
            "fallback_models": ["mock/x"],  # a known slug: an unknown one is a 404 (routing)
        },
    )
    params = probe.calls[0].params
    assert params.metadata == {"a": "header", "b": "nested", "c": "top", "d": 4}
    assert (params.retry_params.num_retries, params.retry_params.retry_after) == (5, 0.5)
    assert params.fallback_models == ["mock/x"]


def test_retries_shortcut_fills_retry_params(probed: tuple[GatewayServer, CallRecorder], fake_upstream: FakeUpstream) -> None:
    gateway, probe = probed
    client = gateway.openai()
    client.chat.completions.create(model="gpt-test", messages=MESSAGES, extra_body={"retries": 2})
    client.chat.completions.create(model="gpt-test", messages=MESSAGES, extra_body={"retries": 2, "retry_params": {"num_retries": 5}})
    assert [c.params.retry_params.num_retries for c in probe.calls] == [2, 5]
    assert "retries" not in fake_upstream.requests[-1].json


def test_customer_identifier_is_cut_and_ints_accepted(probed: tuple[GatewayServer, CallRecorder]) -> None:
    gateway, probe = probed
    client = gateway.openai()
    client.chat.completions.create(model="gpt-test", messages=MESSAGES, extra_body={"customer_identifier": "x" * 400})
    client.chat.completions.create(model="gpt-test", messages=MESSAGES, extra_body={"customer_identifier": 42})
    assert [c.params.customer_identifier for c in probe.calls] == ["x" * 254, "42"]


def test_beta_flags_and_route_provider(probed: tuple[GatewayServer, CallRecorder], fake_upstream: FakeUpstream) -> None:
    gateway, probe = probed
    response = gateway.openai().chat.completions.create(
        model="gpt-test", messages=MESSAGES,
        extra_headers={"X-Respan-Beta": "token-breakdown-2026-03-26, unknown-flag", "X-Respan-Route-Provider": "MOCK"},
    )
    assert probe.calls[0].beta_flags == {"token-breakdown-2026-03-26", "unknown-flag"}
    assert response.id.startswith("chatcmpl-mock-")  # pinned to the mock provider
    assert fake_upstream.requests == []
    with pytest.raises(openai.BadRequestError) as info:
        gateway.openai().chat.completions.create(model="gpt-test", messages=MESSAGES, extra_body={"route_provider_override": "nope"})
    assert info.value.body["param"] == "route_provider_override"


# -- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("extra_body", "param", "words"),
    [
        ({"disable_log": "yes"}, "disable_log", "expected `bool`"),
        ({"fallback_models": "gpt-4o"}, "fallback_models", "expected `array`"),
        ({"retry_params": {"num_retries": "three"}}, "retry_params.num_retries", "expected `int`"),
        ({"customer_params": {"customer_identifier": "c", "budget_duration": "hourly"}}, "customer_params.budget_duration", "invalid enum value"),
        ({"respan_params": {"metadata": ["not", "an", "object"]}}, "metadata", "expected `object`"),
        ({"respan_params": "not an object"}, "respan_params", "must be an object"),
        ({"load_balance_group": {"models": []}}, "load_balance_group.group_id", "required"),
    ],
)
def test_wrong_param_types_are_400_naming_the_param(gateway: GatewayServer, fake_upstream: FakeUpstream, extra_body: dict, param: str, words: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        gateway.openai().chat.completions.create(model="gpt-test", messages=MESSAGES, extra_body=extra_body)
    assert info.value.body["param"] == param
    assert words in info.value.message
    assert fake_upstream.requests == []


@pytest.mark.parametrize("value", ["%%%not-base64%%%", b64([1, 2]), base64.b64encode(b"{broken json").decode()])
def test_bad_params_header_is_400(gateway: GatewayServer, value: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        gateway.openai().chat.completions.create(model="gpt-test", messages=MESSAGES, extra_headers={"X-Data-Respan-Params": value})
    assert info.value.body["param"] == "X-Data-Respan-Params"
    assert "base64" in info.value.message


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2, 3]", 400, "must be a JSON object"),
        (b'"a string"', 400, "must be a JSON object"),
        (b"", 400, "empty"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', 400, "no `model`"),
        (b'{"model": 12, "messages": []}', 400, "`model` must be a str"),
        (b'{"model": "gpt-test", "stream": "yes", "messages": []}', 400, "`stream` must be a bool"),
        (b'{"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}', 404, "not available in the model list"),
    ],
)
def test_bad_bodies_get_clear_errors(gateway: GatewayServer, fake_upstream: FakeUpstream, body: bytes, status: int, words: str) -> None:
    response = httpx2.post(gateway.base_url + "chat/completions", content=body,
                           headers={"authorization": f"Bearer {TEST_KEY}", "content-type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert words in error["message"]
    assert response.headers["x-respan-gateway-request-id"]
    assert fake_upstream.requests == []


_M = b'"messages": [{"role": "user", "content": "hi"}]'


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        # Integers that would not fit a signed 64-bit column, floats that are not finite.
        (b'{"model": "gpt-test", %s, "prompt": {"prompt_id": "p", "version": 9223372036854775808}}' % _M,
         "prompt.version", "<= 9223372036854775807"),
        (b'{"model": "gpt-test", %s, "respan_params": {"prompt": {"prompt_id": "p", "version": -9223372036854775809}}}' % _M,
         "prompt.version", ">= -9223372036854775808"),
        (b'{"model": "gpt-test", %s, "customer_params": {"rate_limit": 18446744073709551616}}' % _M,
         "customer_params.rate_limit", "<= 9223372036854775807"),
        (b'{"model": "gpt-test", %s, "retry_params": {"num_retries": -1}}' % _M, "retry_params.num_retries", ">= 0"),
        (b'{"model": "gpt-test", %s, "timeout": 1e400}' % _M, "timeout", "out of range"),
        (b'{"model": "gpt-test", %s, "respan_params": {"cache_ttl": -1e400}}' % _M, "respan_params", "out of range"),
        (b'{"model": "gpt-test", %s, "prompt_unit_price": 1e308, "completion_unit_price": -1}' % _M,
         "completion_unit_price", ">= 0"),
        # Headers that would split, or that the upstream client cannot encode.
        (b'{"model": "gpt-test", %s, "extra_headers": {"x-a": "b\\r\\nx-injected: 1"}}' % _M, "extra_headers", "no CR, LF"),
        (b'{"model": "gpt-test", %s, "extra_headers": {"x-a": "\\u20ac"}}' % _M, "extra_headers", "printable ASCII"),
        (b'{"model": "gpt-test", %s, "extra_headers": {"x-a\\n": "b"}}' % _M, "extra_headers", "header name"),
        # A trailing space must not smuggle a credential header past the forbidden-header filter.
        (b'{"model": "gpt-test", %s, "extra_headers": {"authorization ": "Bearer sk-stolen"}}' % _M, "extra_headers", "header name"),
        (b'{"model": "gpt-test", %s, "customer_api_keys": {"gpt-test": "sk-a\\r\\nx: y"}}' % _M, "customer_api_keys", "no CR, LF"),
        # The body: nested beyond what the decoder reads; messages not in OpenAI's shape.
        (b'{"model": "gpt-test", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None, "nested too deeply"),
        (b'{"model": "gpt-test", "messages": "hi"}', "messages", "`messages`: expected `array`, got `str`"),
        (b'{"model": "gpt-test", "messages": []}', "messages", "must not be empty"),
        (b'{"model": "gpt-test", "messages": ["hi"]}', "messages", "`messages[0]`: expected `object`"),
        (b'{"model": "gpt-test", "messages": [{"content": "hi"}]}', "messages", "`messages[0].role`: required"),
        (b'{"model": "gpt-test", "messages": [{"role": "user"}, {"role": null}]}', "messages", "`messages[1].role`"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_logged(gateway: GatewayServer, fake_upstream: FakeUpstream,
                                                       body: bytes, param: str | None, words: str) -> None:
    response = httpx2.post(gateway.base_url + "chat/completions", content=body, timeout=10,
                           headers={"authorization": f"Bearer {TEST_KEY}", "content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error
    if param:
        assert f"`{param}" in error["message"]
    assert fake_upstream.requests == []
    record = gateway.record(response.headers["x-respan-log-id"])
    assert record["status_code"] == 400 and record["error_message"] == error["message"]


def test_params_header_nested_too_deeply_is_400(gateway: GatewayServer) -> None:
    response = httpx2.post(gateway.base_url + "chat/completions", json={"model": "gpt-test", "messages": MESSAGES}, timeout=10,
                           headers={"authorization": f"Bearer {TEST_KEY}", "x-data-respan-params": '{"metadata":' + "[" * 5000 + "]" * 5000 + "}"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "X-Data-Respan-Params"


def test_largest_values_that_fit_are_accepted(probed: tuple[GatewayServer, CallRecorder]) -> None:
    gateway, probe = probed
    # The params decode; then the prompts plugin finds no prompt `p` (a 404 naming it, not a 400).
    with pytest.raises(openai.NotFoundError, match="prompt `p` not found"):
        gateway.openai().chat.completions.create(model="gpt-test", messages=MESSAGES, extra_body={
            "prompt": {"prompt_id": "p", "version": 2**63 - 1}, "timeout": 30, "prompt_unit_price": 1e300,
            "extra_headers": {"x-tab": "a\tb ~"}})
    assert probe.last.params.prompt.version == 2**63 - 1


def test_unknown_model_is_404_through_the_sdk(gateway: GatewayServer, fake_upstream: FakeUpstream) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        gateway.openai().chat.completions.create(model="gpt-does-not-exist", messages=MESSAGES)
    assert info.value.code == "model_not_found"
    assert fake_upstream.requests == []


def test_body_too_large_is_413(gateway_factory) -> None:
    gateway = gateway_factory("[server]\nmax_body_bytes = 1000\n")
    with pytest.raises(openai.APIStatusError) as info:
        gateway.openai().chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "x" * 2000}])
    assert info.value.status_code == 413


def test_unknown_route_and_wrong_method(gateway: GatewayServer) -> None:
    missing = httpx2.get(gateway.url + "/api/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = httpx2.get(gateway.base_url + "chat/completions")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert wrong.json()["error"]["type"] == "invalid_request_error"
    assert wrong.headers["x-respan-gateway-request-id"]


def test_with_params_disabled_no_respan_param_reaches_the_provider(gateway_factory, fake_upstream) -> None:
    """Stripping the params is the core's job: without the params plugin they still never go upstream."""
    gateway = gateway_factory(f"""
[plugins]
disabled = ["params"]

[providers.claude]
type = "anthropic"
base_url = "{fake_upstream.url}"
api_key = "sk-ant-config-key"
""")
    secret = "sk-request-secret-1234"
    gateway.openai().chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}], user="end-user",
        extra_body={
            "customer_identifier": "c1", "metadata": {"feature": "x"},
            "credential_override": {"openai": {"api_key": secret}},
            "customer_credentials": {"openai": {"api_key": secret}},
            "respan_params": {"customer_identifier": "c2"}, "keywordsai_params": {"thread_identifier": "t"},
        },
    )
    sent = fake_upstream.requests[-1]
    assert sent.json["user"] == "end-user" and sent.json["messages"] == [{"role": "user", "content": "hi"}]
    for name in ("customer_identifier", "metadata", "credential_override", "customer_credentials",
                 "respan_params", "keywordsai_params"):
        assert name not in sent.json
    assert secret.encode() not in sent.body

    import anthropic

    client = anthropic.Anthropic(base_url=gateway.url + "/api/anthropic", api_key=TEST_KEY, max_retries=0)
    client.messages.create(
        model="claude/claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}],
        metadata={"user_id": "u1", "respan_params": {"customer_identifier": "c3"}},  # type: ignore[typeddict-unknown-key]
        extra_body={"customer_identifier": "c4"},
    )
    sent = fake_upstream.requests[-1]
    assert sent.json["metadata"] == {"user_id": "u1"}  # Anthropic's own field stays, less the params
    assert "customer_identifier" not in sent.json
