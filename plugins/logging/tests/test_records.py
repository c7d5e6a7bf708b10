"""One record per request, checked through the logs API after driving the gateway with the openai SDK.

Every test runs twice: records in SQLite, and in PostgreSQL (see conftest.py).
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import httpx2
import openai
import pytest

from respan_gateway.testing import TEST_KEY

from logs_client import Logs

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello to Paris"}]
ANSWER = "Hello from the fake upstream!"
# The fake counts prompt tokens as words (7 here) and completion tokens as content pieces (5).
PROMPT_TOKENS, COMPLETION_TOKENS = 7, 5
# gpt-test costs 1.0 USD / 1M input and 2.0 USD / 1M output tokens.
COST = (PROMPT_TOKENS * 1.0 + COMPLETION_TOKENS * 2.0) / 1e6


def test_success_record_has_ids_tokens_cost_and_the_three_param_channels(logged_gateway) -> None:
    gw = logged_gateway()
    header = base64.b64encode(json.dumps({"custom_identifier": "from-header", "metadata": {"channel": "header", "h": 1}}).encode()).decode()
    raw = gw.openai().chat.completions.with_raw_response.create(
        model="gpt-test", messages=MESSAGES,
        extra_headers={"X-Data-Respan-Params": header},
        extra_body={
            "customer_identifier": "cust-1",  # top level
            "metadata": {"channel": "body", "n": 3, "flag": True, "obj": {"a": 1}},
            "properties": {"n": 3, "flag": True, "obj": {"a": 1}},
            "respan_params": {"thread_identifier": "thread-9", "metadata": {"channel": "respan_params", "r": "x"}},
        },
    )
    log_id = raw.headers["x-respan-log-id"]
    assert raw.parse().choices[0].message.content == ANSWER
    record = Logs(gw.url).get(log_id)
    assert record["unique_id"] == log_id and record["tenant"] == "acme" and record["key_id"] == "test"
    assert record["gateway_request_id"] == raw.headers["x-respan-gateway-request-id"]
    assert (record["model"], record["requested_model"], record["provider_id"]) == ("gpt-test", "gpt-test", "fake")
    assert (record["status_code"], record["status"], record["stream"]) == (200, "success", False)
    assert (record["prompt_tokens"], record["completion_tokens"], record["total_request_tokens"]) == (7, 5, 12)
    assert record["usage_estimated"] is False
    assert record["cost"] == pytest.approx(COST)
    assert 0 < record["latency"] < 10 and record["routing_time"] is not None and record["gateway_overhead"] >= 0
    # The three channels: top level > respan_params > header, metadata merged key by key.
    assert record["customer_identifier"] == "cust-1"
    assert record["thread_identifier"] == "thread-9"
    assert record["custom_identifier"] == "from-header"
    # metadata values are strings; properties keep their native types.
    assert record["metadata"] == {"channel": "body", "h": "1", "r": "x", "n": "3", "flag": "true", "obj": '{"a":1}'}
    assert record["properties"] == {"n": 3, "flag": True, "obj": {"a": 1}}
    assert record["prompt_messages"] == MESSAGES
    assert record["completion_message"]["content"] == ANSWER
    assert record["warnings"][0]["model"] == "gpt-test" and record["upstream_attempts"] == 1
    # The stored request is what went upstream: no Respan param in it.
    assert set(record["full_request"]) == {"model", "messages"}
    assert record["full_response"]["choices"][0]["message"]["content"] == ANSWER


def test_upstream_error_is_logged_with_its_status_and_message(logged_gateway) -> None:
    gw = logged_gateway()
    with pytest.raises(openai.BadRequestError) as caught:
        gw.openai().chat.completions.create(model="fake/fake-error-400", messages=MESSAGES)
    log_id = caught.value.response.headers["x-respan-log-id"]
    record = Logs(gw.url).get(log_id)
    assert (record["status_code"], record["status"]) == (400, "error")
    assert "fake upstream error 400" in record["error_message"]
    assert record["model"] == "fake/fake-error-400" and record["provider_id"] == "fake"
    assert record["cost"] == 0 and record["completion_message"] is None


def test_rejected_by_params_validation_is_logged(logged_gateway) -> None:
    gw = logged_gateway()
    r = httpx2.post(gw.base_url + "chat/completions", headers={"authorization": f"Bearer {TEST_KEY}"},
                    json={"model": "gpt-test", "messages": MESSAGES, "retry_params": "often"}, timeout=10)
    assert r.status_code == 400
    record = Logs(gw.url).get(r.headers["x-respan-log-id"])
    assert record["status_code"] == 400 and "retry_params" in record["error_message"]
    assert record["requested_model"] == "gpt-test" and record["upstream_attempts"] == 0


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'{"model": 5, "messages": []}'])
def test_unreadable_body_is_logged(logged_gateway, body: bytes) -> None:
    gw = logged_gateway()
    r = httpx2.post(gw.base_url + "chat/completions", content=body, timeout=10,
                    headers={"authorization": f"Bearer {TEST_KEY}", "content-type": "application/json"})
    assert r.status_code == 400
    record = Logs(gw.url).get(r.headers["x-respan-log-id"])
    assert record["status_code"] == 400 and record["error_message"] == r.json()["error"]["message"]
    assert record["upstream_attempts"] == 0


@pytest.mark.parametrize("model", ["gpt-test", "mock/any"])
def test_body_that_is_not_utf8_is_400_and_logged(logged_gateway, fake_upstream, model: str) -> None:
    gw = logged_gateway()
    body = b'{"model": "%s", "messages": [{"role": "user", "content": "bad \xff byte"}]}' % model.encode()
    r = httpx2.post(gw.base_url + "chat/completions", content=body, timeout=10,
                    headers={"authorization": f"Bearer {TEST_KEY}", "content-type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and "not valid UTF-8" in error["message"]
    record = Logs(gw.url).get(r.headers["x-respan-log-id"])
    assert record["status_code"] == 400 and record["error_message"] == error["message"]
    assert fake_upstream.requests == []


def test_large_prompt_goes_upstream_as_sent_and_is_logged_whole(logged_gateway, fake_upstream) -> None:
    """A 200 KB prompt of non-ASCII text with JSON escapes: the upstream receives the client's
    messages byte for byte (only `model` becomes the provider's name), and the record keeps its
    messages and full request as sent (stored from the request's own bytes, not re-encoded)."""
    gw = logged_gateway()
    text = ("Grüße aus Paris, «quoted» \"escaped\" tab\t and emoji \U0001f600 " * 3200)[:200_000]
    messages = [{"role": "system", "content": "Résumé:"}, {"role": "user", "content": text}]
    sent = {"model": "gpt-test", "messages": messages, "temperature": 0.5}
    body = json.dumps(sent, ensure_ascii=False).encode()
    assert len(body) > 200_000 and not body.isascii()
    r = httpx2.post(gw.base_url + "chat/completions", content=body, timeout=30,
                    headers={"authorization": f"Bearer {TEST_KEY}", "content-type": "application/json"})
    assert r.status_code == 200, r.text
    upstream = fake_upstream.requests[-1]
    assert upstream.json == {**sent, "model": "gpt-test-upstream"}
    assert json.dumps(messages, ensure_ascii=False).encode() in upstream.body  # the client's bytes, not re-escaped
    record = Logs(gw.url).get(r.headers["x-respan-log-id"])
    assert record["prompt_messages"] == messages
    assert record["full_request"] == sent


def test_a_prompt_is_stored_once_and_read_back_in_the_full_request(logged_gateway, backend, tmp_path) -> None:
    """A chat (and an Anthropic Messages) request's messages are written once, in prompt_messages:
    the stored full_request holds a marker in their place; the logs API shows the full request whole,
    and a text filter on full_request finds the messages' text (and does not find absent text)."""
    import anthropic

    gw = logged_gateway()
    messages = [{"role": "user", "content": "Tell the Zebra-Unicorn story " + "x" * 5000}]
    raw = gw.openai().chat.completions.with_raw_response.create(
        model="gpt-test", messages=messages, temperature=0.5, extra_body={"customer_identifier": "once"})
    chat_id = raw.headers["x-respan-log-id"]
    client = anthropic.Anthropic(base_url=gw.url + "/api/anthropic", api_key=TEST_KEY, max_retries=0)
    user = [{"role": "user", "content": "Say hello to the Okapi"}]
    native_id = client.messages.with_raw_response.create(model="gpt-test", max_tokens=50, messages=user).headers["x-respan-log-id"]
    logs = Logs(gw.url)
    record = logs.get(chat_id)
    assert record["prompt_messages"] == messages
    assert record["full_request"] == {"model": "gpt-test", "messages": messages, "temperature": 0.5}
    native = logs.get(native_id)
    assert native["prompt_messages"] == user
    assert native["full_request"] == {"model": "gpt-test", "max_tokens": 50, "messages": user}
    by_text = {"full_request": {"operator": "icontains", "value": ["zebra-unicorn"]}}
    assert [r["unique_id"] for r in logs.list(by_text)["results"]] == [chat_id]
    assert [r["unique_id"] for r in logs.list({"full_request": {"operator": "contains", "value": ["Okapi"]}})["results"]] == [native_id]
    assert {r["unique_id"] for r in logs.list({"full_request": {"operator": "contains", "value": ['"temperature"']}})["results"]} == {chat_id}
    assert logs.list({"full_request": {"operator": "contains", "value": ["Giraffe"]}})["results"] == []
    if backend == "sqlite":  # the row itself: the 5 KB prompt is in one column, not two
        import sqlite3

        conn = sqlite3.connect(tmp_path / "respan.sqlite3", timeout=10)
        try:
            stored, prompt = conn.execute("SELECT full_request, prompt_messages FROM request_logs WHERE unique_id = ?",
                                          (chat_id,)).fetchone()
        finally:
            conn.close()
        assert json.loads(stored) == {"model": "gpt-test", "messages": "$prompt_messages", "temperature": 0.5}
        assert json.loads(prompt) == messages


def test_fallback_lists_every_attempt_and_the_model_that_answered(logged_gateway) -> None:
    gw = logged_gateway()
    raw = gw.openai().chat.completions.with_raw_response.create(
        model="fake/fake-error-503", messages=MESSAGES, extra_body={"fallback_models": ["gpt-test"]})
    record = Logs(gw.url).get(raw.headers["x-respan-log-id"])
    assert record["status_code"] == 200
    assert record["requested_model"] == "fake/fake-error-503"
    assert record["model"] == "gpt-test"
    attempts = [(w["model"], w["status_code"]) for w in record["warnings"]]
    assert attempts[0] == ("fake/fake-error-503", 503) and attempts[-1] == ("gpt-test", 200)
    assert record["upstream_attempts"] == len(attempts) >= 2
    assert record["cost"] == pytest.approx(COST)  # priced as the model that answered


def test_stream_record_has_ttft_assembled_text_and_reported_usage(logged_gateway) -> None:
    gw = logged_gateway()
    raw = gw.openai().chat.completions.with_raw_response.create(
        model="gpt-test", messages=MESSAGES, stream=True, stream_options={"include_usage": True},
        extra_body={"extra_headers": {"x-fake-scenario": "slow-chunks-20"}})
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == ANSWER
    record = Logs(gw.url).wait_for(raw.headers["x-respan-log-id"])
    assert record["stream"] is True and record["status_code"] == 200
    assert record["completion_message"] == {"role": "assistant", "content": ANSWER}
    assert (record["prompt_tokens"], record["completion_tokens"], record["usage_estimated"]) == (7, 5, False)
    assert record["cost"] == pytest.approx(COST)
    # Five pieces 20 ms apart: the first token comes well before the end.
    assert 0 < record["time_to_first_token"] < record["latency"]
    assert record["latency"] - record["time_to_first_token"] >= 0.06


def test_a_long_stream_is_assembled_whole_on_chat_and_anthropic(logged_gateway) -> None:
    """300 pieces: the accumulators join their pieces 16 at a time (TextPieces); the record's
    completion is what the client read, in order, on both endpoints."""
    import anthropic

    gw = logged_gateway()
    scenario = {"extra_headers": {"x-fake-scenario": "chunks-300"}}
    raw = gw.openai().chat.completions.with_raw_response.create(
        model="gpt-test", messages=MESSAGES, stream=True, extra_body=scenario)
    pieces = [c.choices[0].delta.content for c in raw.parse() if c.choices and c.choices[0].delta.content]
    record = Logs(gw.url).wait_for(raw.headers["x-respan-log-id"])
    assert len(pieces) == 300 and record["completion_message"]["content"] == "".join(pieces)
    client = anthropic.Anthropic(base_url=gw.url + "/api/anthropic", api_key=TEST_KEY, max_retries=0)
    raw = client.messages.with_raw_response.create(model="gpt-test", max_tokens=500, stream=True, extra_body=scenario,
                                                   messages=[{"role": "user", "content": "Hi"}])
    pieces = [e.delta.text for e in raw.parse() if e.type == "content_block_delta"]
    record = Logs(gw.url).wait_for(raw.headers["x-respan-log-id"])
    assert record["completion_message"] == {"role": "assistant", "content": [{"type": "text", "text": "".join(pieces)}]}
    assert len(pieces) == 300


def test_stream_without_usage_is_estimated_and_marked(logged_gateway) -> None:
    gw = logged_gateway()
    raw = gw.openai().chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices) == ANSWER
    record = Logs(gw.url).wait_for(raw.headers["x-respan-log-id"])
    assert record["usage_estimated"] is True
    assert record["prompt_tokens"] > 0 and record["completion_tokens"] > 0
    assert record["cost"] > 0


def test_stream_cut_midway_is_an_error_record_with_the_partial_text(logged_gateway) -> None:
    gw = logged_gateway()
    raw = gw.openai().chat.completions.with_raw_response.create(model="fake/fake-cut-after-2", messages=MESSAGES, stream=True)
    pieces = []
    with pytest.raises(openai.APIError):
        for chunk in raw.parse():
            pieces.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    record = Logs(gw.url).wait_for(raw.headers["x-respan-log-id"])
    assert record["status"] == "error" and record["status_code"] >= 500
    assert record["error_message"]
    assert record["completion_message"]["content"] == "".join(pieces) != ""
    assert record["usage_estimated"] is True


def test_client_disconnect_mid_stream_completes_the_record(logged_gateway, fake_upstream) -> None:
    gw = logged_gateway()
    log_ids = []
    with httpx2.stream("POST", gw.base_url + "chat/completions", headers={"authorization": f"Bearer {TEST_KEY}"},
                       json={"model": "gpt-test", "messages": MESSAGES, "stream": True,
                             "extra_headers": {"x-fake-scenario": "slow-chunks-300,chunks-20"}}, timeout=10) as r:
        log_ids.append(r.headers["x-respan-log-id"])
        for line in r.iter_lines():
            if '"content":"Hello' in line:
                break  # leave after the first words
    assert fake_upstream.wait_for_disconnect(5), "the gateway must close the upstream when the client leaves"
    record = Logs(gw.url).wait_for(log_ids[0])
    assert record["status_code"] == 499 and record["status"] == "error"
    assert record["completion_message"]["content"].startswith("Hello")
    assert record["latency"] < 5


def test_disable_log_keeps_metrics_and_ids_but_no_content(logged_gateway) -> None:
    gw = logged_gateway()
    secret_prompt = "my secret prompt about zanzibar"
    raw = gw.openai().chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": secret_prompt}],
        tools=[{"type": "function", "function": {"name": "lookup_zanzibar", "parameters": {"type": "object"}}}],
        tool_choice="none",
        extra_body={"disable_log": True, "metadata": {"team": "a"}, "customer_identifier": "c-2"})
    record = Logs(gw.url).get(raw.headers["x-respan-log-id"])
    for field in ("prompt_messages", "completion_message", "tools", "tool_choice", "tool_calls", "full_request", "full_response"):
        assert record[field] is None, field
    dumped = json.dumps(record)
    assert "zanzibar" not in dumped and ANSWER not in dumped
    assert record["disable_log"] is True and record["prompt_tokens"] == 5 and record["cost"] > 0
    assert record["metadata"] == {"team": "a"} and record["customer_identifier"] == "c-2"


def test_prompt_and_completion_unit_price_override_the_catalog(logged_gateway) -> None:
    gw = logged_gateway()
    raw = gw.openai().chat.completions.with_raw_response.create(
        model="gpt-test", messages=MESSAGES, extra_body={"prompt_unit_price": 10.0, "completion_unit_price": 100.0})
    record = Logs(gw.url).get(raw.headers["x-respan-log-id"])
    assert record["cost"] == pytest.approx((7 * 10.0 + 5 * 100.0) / 1e6)
    assert (record["prompt_unit_price"], record["completion_unit_price"]) == (10.0, 100.0)


def test_token_breakdown_beta_puts_per_part_estimates_in_properties(logged_gateway) -> None:
    from respan_gateway import tokens

    gw = logged_gateway()
    tokens.preload().join(30)  # loaded on first need; wait for it here so the counts are BPE's
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    raw = gw.openai().chat.completions.with_raw_response.create(
        model="gpt-test", messages=MESSAGES, tools=tools, tool_choice="none",
        extra_headers={"X-Respan-Beta": "token-breakdown-2026-03-26, unknown-flag"}, extra_body={"properties": {"p": 1}})
    props = Logs(gw.url).get(raw.headers["x-respan-log-id"])["properties"]
    assert props["p"] == 1 and props["token_breakdown_method"] == "o200k_base"
    assert props["system_tokens"] == tokens.count_message(MESSAGES[0]) == 3 + tokens.count("You are terse.")
    assert props["user_message_tokens"] == tokens.count_message(MESSAGES[1]) > 3
    assert props["tools_tokens"] == tokens.count_json(tools) > 0


def test_heuristic_tokenizer_setting_loads_nothing(logged_gateway) -> None:
    from respan_gateway import tokens

    gw = logged_gateway(tokenizer="heuristic")
    raw = gw.openai().chat.completions.with_raw_response.create(
        model="gpt-test", messages=MESSAGES, extra_headers={"X-Respan-Beta": "token-breakdown-2026-03-26"})
    props = Logs(gw.url).get(raw.headers["x-respan-log-id"])["properties"]
    assert props["token_breakdown_method"] == "heuristic"
    assert tokens._loading is None  # no tokenizer thread was started


def test_patch_metadata_feedback_and_note(logged_gateway) -> None:
    gw = logged_gateway()
    raw = gw.openai().chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES, extra_body={"metadata": {"a": "1"}})
    logs, log_id = Logs(gw.url), raw.headers["x-respan-log-id"]
    r = logs.patch(log_id, {"metadata": {"b": 2}, "positive_feedback": True, "note": "good"})
    assert r.status_code == 200, r.text
    record = logs.get(log_id)
    assert record["metadata"] == {"a": "1", "b": "2"} and record["positive_feedback"] is True and record["note"] == "good"
    assert logs.patch(log_id, {"positive_feedback": None}).json()["positive_feedback"] is None
    bad = logs.patch(log_id, {"cost": 0})
    assert bad.status_code == 400 and "immutable" in bad.json()["error"]["message"]
    assert logs.patch("no-such-id", {"note": "x"}).status_code == 404


def test_records_are_scoped_to_the_callers_tenant(logged_gateway, fake_upstream, backend, tmp_path, request, gateway_factory) -> None:
    from conftest import store_toml

    from respan_gateway.testing import test_config

    other = "sk-other-tenant-key"
    config = test_config(fake_upstream.url, store_toml(backend, tmp_path, request),
                         keys=f'{{ key = "{other}", tenant = "globex", name = "other" }}')
    gw = gateway_factory(config=config)
    raw = gw.openai().chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
    log_id = raw.headers["x-respan-log-id"]
    assert Logs(gw.url).wait_for(log_id)["tenant"] == "acme"  # stored (a busy store may take more than a read waits)
    theirs = Logs(gw.url, key=other)
    assert theirs.list()["count"] == 0 and theirs.summary()["number_of_requests"] == 0
    assert httpx2.get(f"{gw.url}/api/request-logs/{log_id}/", headers=theirs.headers, timeout=10).status_code == 404
    assert httpx2.get(f"{gw.url}/api/request-logs/{log_id}/", timeout=10).status_code == 401


def test_records_are_written_with_the_metrics_plugin_disabled(logged_gateway) -> None:
    gw = logged_gateway('[plugins]\ndisabled = ["metrics"]\n')
    assert httpx2.get(gw.url + "/metrics", timeout=10).status_code == 404
    raw = gw.openai().chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices) == ANSWER
    record = Logs(gw.url).wait_for(raw.headers["x-respan-log-id"])
    assert record["completion_message"] == {"role": "assistant", "content": ANSWER}
    assert record["usage_estimated"] is True and record["cost"] > 0


def test_native_anthropic_stream_record_is_assembled_by_the_endpoints_accumulator(logged_gateway, fake_upstream) -> None:
    import anthropic

    gw = logged_gateway(f'[providers.claude]\ntype = "anthropic"\nbase_url = "{fake_upstream.url}"\napi_key = "sk-ant-k"\n'
                        '[models."claude-test"]\nprovider = "claude"\nupstream_model = "claude-sonnet-4-5"\n')
    client = anthropic.Anthropic(base_url=gw.url + "/api/anthropic", api_key=TEST_KEY, max_retries=0)
    raw = client.messages.with_raw_response.create(model="claude-test", max_tokens=50, messages=[{"role": "user", "content": "Hi"}],
                                                   stream=True)
    text = "".join(e.delta.text for e in raw.parse() if e.type == "content_block_delta")
    assert text == ANSWER
    record = Logs(gw.url).wait_for(raw.headers["x-respan-log-id"])
    assert (record["endpoint"], record["stream"], record["status_code"]) == ("anthropic_messages", True, 200)
    assert record["completion_message"] == {"role": "assistant", "content": [{"type": "text", "text": ANSWER}]}
    assert record["usage_estimated"] is False and record["prompt_tokens"] > 0 and record["completion_tokens"] > 0


def test_anthropic_endpoint_over_a_chat_provider_is_logged_in_anthropic_shape(logged_gateway) -> None:
    import anthropic

    gw = logged_gateway()
    client = anthropic.Anthropic(base_url=gw.url + "/api/anthropic", api_key=TEST_KEY, max_retries=0)
    user = [{"role": "user", "content": "Say hello to Paris"}]
    raw = client.messages.with_raw_response.create(model="gpt-test", max_tokens=50, messages=user, system="Be terse.")
    message = raw.parse()
    record = Logs(gw.url).get(raw.headers["x-respan-log-id"])
    assert (record["endpoint"], record["model"], record["provider_id"], record["status_code"]) == ("anthropic_messages", "gpt-test", "fake", 200)
    assert (record["prompt_tokens"], record["completion_tokens"]) == (6, 5) and record["usage_estimated"] is False
    assert record["cost"] == pytest.approx((6 * 1.0 + 5 * 2.0) / 1e6)
    assert record["prompt_messages"] == user  # the request as the client sent it, not the translated chat body
    assert record["completion_message"] == {"role": "assistant", "content": [{"type": "text", "text": ANSWER}]}
    assert record["full_response"]["id"] == message.id and record["full_response"]["stop_reason"] == "end_turn"

    tool = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
    raw = client.messages.with_raw_response.create(model="gpt-test", max_tokens=50, messages=user, tools=[tool], stream=True)
    assert [e.type for e in raw.parse()][-1] == "message_stop"
    record = Logs(gw.url).wait_for(raw.headers["x-respan-log-id"])
    assert (record["stream"], record["prompt_tokens"], record["completion_tokens"]) == (True, 4, 2)
    assert record["usage_estimated"] is False and record["cost"] == pytest.approx((4 * 1.0 + 2 * 2.0) / 1e6)
    (block,) = record["completion_message"]["content"]
    assert (block["type"], block["name"], block["input"]) == ("tool_use", "get_weather", {"city": "Paris"})


def test_customer_is_normalised_once_from_customer_params(logged_gateway) -> None:
    gw = logged_gateway()
    raw = gw.openai().chat.completions.with_raw_response.create(
        model="gpt-test", messages=MESSAGES,
        extra_body={"customer_params": {"customer_identifier": 42, "name": "Ada", "email": "ada@example.com"},
                    "customer_email": "top@example.com"})
    record = Logs(gw.url).get(raw.headers["x-respan-log-id"])
    assert (record["customer_identifier"], record["customer_name"]) == ("42", "Ada")
    assert record["customer_email"] == "top@example.com"  # the top-level param wins
    assert record["customer_params"]["email"] == "ada@example.com"


def test_a_batch_of_records_of_different_shapes_is_stored_exactly(logged_gateway) -> None:
    """One insert of records that leave different columns empty (the store binds each group of rows
    with the columns they hold, the others NULL): each reads back as it was written."""
    from respan_plugins.logging.record import LogRecord
    from respan_plugins.logging.store import record_to_api

    gw = logged_gateway()
    store = dict(gw.gateway.observers)["logging"].store
    records = [
        LogRecord(unique_id="shape-1", model="gpt-test", start_time=1.8e9, latency=0.5, status_code=200,
                  metadata={"a": "1"}, cache_hit=False, prompt_messages=[{"role": "user", "content": "hi"}]),
        LogRecord(unique_id="shape-2", model="gpt-test", start_time=1.8e9 + 1, status_code=500, error_message="boom",
                  stream=True, time_to_first_token=0.25),
        LogRecord(unique_id="shape-3", customer_identifier="cust", cost=0.25, start_time=None, disable_log=True),
        LogRecord(unique_id="shape-4", model="gpt-test", start_time=1.8e9 + 2, latency=0.75, status_code=200,
                  metadata={"a": "2"}, cache_hit=True, prompt_messages=[{"role": "user", "content": "again"}]),
    ]
    expected = [record_to_api(r) for r in records]
    gw.call(store.insert(records))
    for record, want in zip(records, expected):
        assert gw.call(store.get("default", record.unique_id)) == want, record.unique_id


def test_log_ids_are_time_ordered_uuids(logged_gateway) -> None:
    """A record's id (``x-respan-log-id``) is a UUID of version 7: a later request's id sorts after an
    earlier one's, so the table's primary-key index takes each new record at its end."""
    gw = logged_gateway()
    client = gw.openai()
    ids = []
    for _ in range(3):
        ids.append(client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES).headers["x-respan-log-id"])
        time.sleep(0.002)  # ids of one millisecond need not be in order
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert all(uuid.UUID(i).version == 7 for i in ids)
    assert Logs(gw.url).get(ids[-1])["unique_id"] == ids[-1]


def test_a_batch_insert_writes_about_what_it_stores(logged_gateway, backend) -> None:
    """SQLite: a batch of records writes a few KB per record (the WAL's pages), not ~35 KB: each insert
    also runs the metadata index's trigger, so SQLite keeps a statement journal of the pages it
    changes, which in a temporary file (the default past 64 KiB) was written for every record."""
    if backend != "sqlite":
        pytest.skip("the statement journal is SQLite's")
    from respan_plugins.logging.record import LogRecord

    gw = logged_gateway()
    store = dict(gw.gateway.observers)["logging"].store
    content = {"role": "assistant", "content": "Hello from the fake upstream!"}

    def batch(first: int) -> list[LogRecord]:
        return [LogRecord(unique_id=f"batch-{first + i:06d}", model="gpt-test", tenant="acme", start_time=1.8e9 + first + i,
                          latency=0.5, status_code=200, prompt_tokens=7, completion_tokens=5, cost=1e-5,
                          prompt_messages=MESSAGES, completion_message=content) for i in range(200)]

    def written() -> int:
        with open("/proc/self/io") as f:
            return int(next(line for line in f if line.startswith("wchar:")).split()[1])

    gw.call(store.insert(batch(0)))  # the tables' first pages
    before = written()
    for first in range(200, 1200, 200):
        gw.call(store.insert(batch(first)))
    per_record = (written() - before) / 1000
    assert per_record < 8 * 1024, f"{per_record / 1024:.1f} KB written per record"
    assert gw.call(store.get("acme", "batch-001199"))["completion_message"] == content
