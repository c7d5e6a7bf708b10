"""/api/responses through the real openai SDK (strict) over real sockets: native pass-through, the
translation to chat, stored responses and previous_response_id, params, logs, request_breakdown."""

from __future__ import annotations

import base64
import json
import time

import httpx2
import openai
import pytest
from pydantic import BaseModel

from respan_gateway.testing import TEST_KEY
from respan_gateway.testing.call_recorder import CallRecorder

ANSWER = "Hello from the fake upstream!"
AUTH = {"authorization": f"Bearer {TEST_KEY}"}
OTHER_KEY = "sk-respan-other-tenant"
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def providers(upstream: str) -> str:
    return f"""
[providers.oai]
type = "openai"
base_url = "{upstream}/v1"
api_key = "sk-oai-configured"

[providers.compat]
type = "openai_compatible"
base_url = "{upstream}/v1"
responses_api = true

[logging]
flush_interval = 0.05
"""


@pytest.fixture
def gw(gateway_factory, fake_upstream, tmp_path):
    extra = providers(fake_upstream.url) + f'spill_dir = "{tmp_path}/spill"\n'
    return gateway_factory(extra, keys=f'{{ key = "{OTHER_KEY}", tenant = "other", name = "o" }}')


@pytest.fixture
def client(gw):
    return gw.openai(_strict_response_validation=True)


def sent(fake_upstream, path: str):
    return [r for r in fake_upstream.requests if r.path == path]


# -- create and stream, native and translated ------------------------------------------------------------

@pytest.mark.parametrize("model", ["oai/gpt-4o", "gpt-test", "mock/x"])
def test_create_and_stream(client, fake_upstream, model) -> None:
    answer = client.responses.create(model=model, input="Say hello", instructions="Be terse.")
    assert answer.status == "completed" and answer.output_text and answer.usage.total_tokens > 0
    with client.responses.stream(model=model, input="Say hello") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert final.output_text == answer.output_text
    if model != "mock/x":
        assert answer.output_text == ANSWER


def test_native_pass_through_and_translation(client, fake_upstream) -> None:
    # Native: the body as sent, less the Respan params, with the provider's model name.
    client.responses.create(model="oai/gpt-4o", input="hi", extra_body={"customer_identifier": "c1", "top_k_x": 3,
                                                                          "include": ["reasoning.encrypted_content"]})
    (native,) = sent(fake_upstream, "/v1/responses")
    assert native.json == {"model": "gpt-4o", "input": "hi", "top_k_x": 3, "include": ["reasoning.encrypted_content"]}
    assert native.headers["authorization"] == "Bearer sk-oai-configured"
    # openai_compatible: served through chat unless the provider says it has the Responses API.
    client.responses.create(model="gpt-test", input="hi", instructions="be brief", max_output_tokens=20, temperature=0.2)
    (chat,) = sent(fake_upstream, "/v1/chat/completions")
    assert chat.json == {"model": "gpt-test-upstream", "messages": [{"role": "system", "content": "be brief"},
                                                                     {"role": "user", "content": "hi"}],
                         "max_completion_tokens": 20, "temperature": 0.2}
    client.responses.create(model="compat/m", input="hi")
    assert len(sent(fake_upstream, "/v1/responses")) == 2


def test_aliases_and_bad_input(gw) -> None:
    for path in ("/api/responses", "/api/v1/responses", "/v1/responses"):
        r = httpx2.post(gw.url + path, json={"model": "gpt-test", "input": "hi"}, headers=AUTH)
        assert r.status_code == 200 and r.json()["object"] == "response", path
    r = httpx2.post(gw.url + "/api/responses", json={"model": "gpt-test"}, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    r = httpx2.post(gw.url + "/api/responses", json={"model": "gpt-test", "input": [{"type": "item_reference", "id": "x"}]},
                    headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["param"] == "input[0].type"
    r = httpx2.post(gw.url + "/api/responses", json={"model": "gpt-test", "input": "hi", "previous_response_id": "resp_nope"},
                    headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["code"] == "previous_response_not_found"


def test_parse_with_pydantic(client) -> None:
    class Weather(BaseModel):
        city: str
        temp_c: int

    for model in ("oai/gpt-4o", "gpt-test"):
        parsed = client.responses.parse(model=model, input="Weather in Paris?", text_format=Weather)
        assert parsed.output_parsed == Weather(city="Paris", temp_c=21), model


def test_tool_round_trip_streamed(client, fake_upstream) -> None:
    with client.responses.stream(model="gpt-test", input="Weather in Paris?", tools=[WEATHER]) as stream:
        final = stream.get_final_response()
    (call,) = [o for o in final.output if o.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    follow = [{"role": "user", "content": "Weather in Paris?"}, call.model_dump(exclude_none=True),
              {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 21}'}]
    with client.responses.stream(model="gpt-test", input=follow, tools=[WEATHER], tool_choice="none") as stream:
        assert stream.get_final_response().output_text == ANSWER
    messages = fake_upstream.requests[-1].json["messages"]
    assert messages[1]["tool_calls"][0]["id"] == call.call_id and messages[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert messages[2] == {"role": "tool", "tool_call_id": call.call_id, "content": '{"temp_c": 21}'}
    assert fake_upstream.requests[-1].json["tools"] == [{"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}]


def test_image_input(client, fake_upstream) -> None:
    image = "data:image/png;base64," + base64.b64encode(b"\x89PNG fake").decode()
    client.responses.create(model="gpt-test", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": image, "detail": "low"}]}])
    content = fake_upstream.requests[-1].json["messages"][0]["content"]
    assert content == [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": image, "detail": "low"}}]


def test_incomplete_and_cached_usage(client) -> None:
    answer = client.responses.create(model="fake/fake-finish-length,cache-read-4", input="hi")
    assert answer.status == "incomplete" and answer.incomplete_details.reason == "max_output_tokens"
    assert answer.usage.input_tokens_details.cached_tokens == 4
    events = list(client.responses.create(model="fake/fake-finish-length", input="hi", stream=True))
    assert events[-1].type == "response.incomplete"


def test_refused_fields_name_the_field(client) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="gpt-test", input="hi", tools=[{"type": "web_search"}])
    assert info.value.param == "tools[0].type" and "web_search" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="gpt-test", input="hi", background=True)
    assert info.value.param == "background"
    # A native provider takes them.
    client.responses.create(model="oai/gpt-4o", input="hi", tools=[{"type": "web_search"}])


# -- stored responses and previous_response_id -------------------------------------------------------------

def test_previous_response_id_on_a_translated_provider(client, fake_upstream) -> None:
    first = client.responses.create(model="gpt-test", input="My name is Ada.", instructions="Remember names.")
    # At once: the stored response is readable as soon as the answer is (it is written before it is sent).
    second = client.responses.create(model="gpt-test", input="What is my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    assert fake_upstream.requests[-1].json["messages"] == [  # instructions are not carried over
        {"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": ANSWER},
        {"role": "user", "content": "What is my name?"}]
    with client.responses.stream(model="mock/x", input="And again?", previous_response_id=second.id) as stream:
        third = stream.get_final_response()
    fourth = client.responses.create(model="gpt-test", input="Last.", previous_response_id=third.id)
    assert fourth.output_text == ANSWER
    assert [m["content"] for m in fake_upstream.requests[-1].json["messages"]] == [
        "My name is Ada.", ANSWER, "What is my name?", ANSWER, "And again?", third.output_text, "Last."]


def test_previous_response_id_native_forwarded_then_replayed_across_a_fallback(client, fake_upstream) -> None:
    first = client.responses.create(model="oai/gpt-4o", input="My name is Ada.")
    # Same provider and account: the id is forwarded (the provider keeps the conversation).
    second = client.responses.create(model="oai/gpt-4o", input="Name?", previous_response_id=first.id)
    assert fake_upstream.requests[-1].json == {"model": "gpt-4o", "input": "Name?", "previous_response_id": first.id}
    # The native provider fails: the fallback (translated) gets the whole conversation from the store.
    third = client.responses.create(model="oai/fake-error-503", input="Again?", previous_response_id=second.id,
                                    extra_body={"fallback_models": ["gpt-test"]})
    assert third.output_text == ANSWER and third.previous_response_id == second.id
    assert fake_upstream.requests[-1].json["messages"] == [
        {"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": ANSWER},
        {"role": "user", "content": "Name?"}, {"role": "assistant", "content": ANSWER},
        {"role": "user", "content": "Again?"}]
    # Back on the native provider with another account's key: replayed too, not forwarded.
    client.responses.create(model="oai/gpt-4o", input="And now?", previous_response_id=third.id,
                            extra_body={"credential_override": {"oai/gpt-4o": {"api_key": "sk-another-account"}}})
    body = fake_upstream.requests[-1].json
    assert "previous_response_id" not in body and [i["content"] for i in body["input"]][-1] == "And now?"
    assert len(body["input"]) == 7 and fake_upstream.requests[-1].headers["authorization"] == "Bearer sk-another-account"


def test_other_tenants_and_store_false(gw, client, fake_upstream) -> None:
    mine = client.responses.create(model="gpt-test", input="secret")
    other = gw.openai(api_key=OTHER_KEY, _strict_response_validation=True)
    with pytest.raises(openai.NotFoundError) as info:
        other.responses.create(model="gpt-test", input="hi", previous_response_id=mine.id)
    assert info.value.code == "previous_response_not_found" and info.value.param == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(mine.id)
    assert client.responses.retrieve(mine.id).output_text == ANSWER  # still there for its tenant
    unstored = client.responses.create(model="gpt-test", input="forget me", store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    streamed = list(client.responses.create(model="oai/gpt-4o", input="x", store=False, stream=True))[-1].response
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="gpt-test", input="hi", previous_response_id=streamed.id)
    assert fake_upstream.requests[-1].json["store"] is False  # forwarded to the native provider as asked


def test_get_delete_and_retention(gw, client) -> None:
    answer = client.responses.create(model="gpt-test", input="keep me")
    got = client.responses.retrieve(answer.id)
    assert got.model_dump() == answer.model_dump()
    for prefix in ("/api/responses/", "/api/v1/responses/", "/v1/responses/"):
        assert httpx2.get(gw.url + prefix + answer.id, headers=AUTH).json()["id"] == answer.id
    client.responses.delete(answer.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(answer.id)
    # Retention: 30 days by default, on the store's clock.
    kept = client.responses.create(model="gpt-test", input="for a while")
    store = dict(gw.gateway.middlewares)["responses"].store
    now = time.time()
    store.clock = lambda: now + 29 * 86400
    assert client.responses.retrieve(kept.id).id == kept.id
    store.clock = lambda: now + 31 * 86400
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(kept.id)
    assert gw.call(store.purge()) >= 1


# -- reliability ---------------------------------------------------------------------------------------------

def test_fallback_and_retries_before_the_first_event(client, fake_upstream) -> None:
    events = list(client.responses.create(model="fake/fake-error-503", input="hi", stream=True,
                                          extra_body={"fallback_models": ["oai/gpt-4o"]}))
    assert [e.type for e in events][-1] == "response.completed" and events[-1].response.output_text == ANSWER
    assert [r.path for r in fake_upstream.requests[-2:]] == ["/v1/chat/completions", "/v1/responses"]
    fake_upstream.reset()
    events = list(client.responses.create(
        model="oai/fake-error-503", input="hi", stream=True,
        extra_body={"retry_params": {"num_retries": 2, "retry_after": 0.01},
                    "extra_headers": {"x-fake-fail-times": "1", "x-fake-fail-key": "resp-retry"}}))
    assert events[-1].type == "response.completed" and len(fake_upstream.requests) == 2


def test_cut_stream_is_response_failed_and_logged(gw, client) -> None:
    raw = client.responses.with_raw_response.create(model="fake/fake-cut-after-2", input="hi", stream=True)
    events = list(raw.parse())
    assert [e.type for e in events][-2:] == ["response.failed", "error"]
    record = gw.record(raw.headers["x-respan-log-id"])
    assert record["status_code"] >= 500 and "broke off" in record["error_message"]
    # Native: an upstream error event, or a stream that ends without its terminal event, is no success either.
    for model in ("oai/fake-midstream-error", "oai/fake-no-done"):
        events = list(client.responses.create(model=model, input="hi", stream=True))
        assert [e.type for e in events][-2:] == ["response.failed", "error"], model
        assert [e.sequence_number for e in events] == list(range(len(events)))


# -- params, logs, request_breakdown ----------------------------------------------------------------------

def test_respan_params_through_all_three_channels(gateway_factory, fake_upstream) -> None:
    recorder = CallRecorder()
    gw = gateway_factory(providers(fake_upstream.url).replace("[logging]\nflush_interval = 0.05\n", ""), plugins=(recorder,))
    client = gw.openai()
    header = base64.b64encode(json.dumps({"customer_identifier": "from-header", "metadata": {"h": "1"}}).encode()).decode()
    for model in ("oai/gpt-4o", "gpt-test"):
        client.responses.create(model=model, input="hi", extra_headers={"x-data-respan-params": header},
                                extra_body={"thread_identifier": "t1", "respan_params": {"metadata": {"b": "2"}, "span_name": "s"}})
        params = recorder.last.params
        assert (params.customer_identifier, params.thread_identifier, params.span_name) == ("from-header", "t1", "s")
        assert params.metadata == {"h": "1", "b": "2"}
        body = fake_upstream.requests[-1].json
        assert not {"thread_identifier", "respan_params", "customer_identifier", "metadata"} & set(body)


def test_log_record(gw, client) -> None:
    raw = client.responses.with_raw_response.create(model="gpt-test", input="Say hello to Paris", instructions="Be terse.",
                                                    tools=[WEATHER], tool_choice="none")
    record = gw.record(raw.headers["x-respan-log-id"])
    assert record["log_type"] == "response" and record["endpoint"] == "responses"
    assert record["prompt_messages"] == [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Say hello to Paris"}]
    assert record["completion_message"]["content"] == ANSWER and record["completion_message"]["role"] == "assistant"
    assert (record["prompt_tokens"], record["completion_tokens"]) == (6, 5)
    assert record["cost"] == pytest.approx((6 * 1.0 + 5 * 2.0) / 1e6)
    assert record["tools"] == [WEATHER] and record["upstream_attempts"] == 1 and record["warnings"][0]["status_code"] == 200
    # A tool round trip reads as the chat conversation it is.
    follow = [{"role": "user", "content": "Weather?"},
              {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
              {"type": "function_call_output", "call_id": "call_1", "output": '{"temp_c": 21}'}]
    raw = client.responses.with_raw_response.create(model="gpt-test", input=follow, tools=[WEATHER])
    record = gw.record(raw.headers["x-respan-log-id"])
    assert [m["role"] for m in record["prompt_messages"]] == ["user", "assistant", "tool"]
    assert record["prompt_messages"][1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert record["tool_calls"][0]["function"]["arguments"] == '{"city":"Paris"}'  # the answer: a call again
    raw = client.responses.with_raw_response.create(model="fake/fake-error-503", input="hi", stream=True,
                                                    extra_body={"fallback_models": ["gpt-test"]})
    final = list(raw.parse())[-1].response
    record = gw.record(raw.headers["x-respan-log-id"])
    assert record["stream"] and record["time_to_first_token"] > 0 and record["completion_message"]["content"] == ANSWER
    assert [w["status_code"] for w in record["warnings"]] == [503, 200] and record["model"] == "gpt-test"
    assert record["completion_tokens"] == final.usage.output_tokens and not record["usage_estimated"]


def test_request_breakdown(gw, client) -> None:
    answer = client.responses.create(model="gpt-test", input="Say hello", extra_body={"request_breakdown": True})
    breakdown = answer.model_extra["request_breakdown"]
    assert breakdown["completion_message"]["content"] == ANSWER and breakdown["completion_tokens"] == 5
    assert breakdown["prompt_messages"] == "Say hello" and breakdown["cost"] > 0
    for model in ("gpt-test", "oai/gpt-4o"):
        events = list(client.responses.create(model=model, input="Say hello", stream=True, extra_body={"request_breakdown": True}))
        # On the terminal event (a new event type would fail the SDKs' validation of every event).
        assert events[-1].type == "response.completed" and [e.sequence_number for e in events] == list(range(len(events)))
        assert events[-1].model_extra["request_breakdown"]["completion_tokens"] == 5
        assert events[-1].model_extra["request_breakdown"]["completion_message"]["content"] == ANSWER
        with client.responses.stream(model=model, input="hi", extra_body={"request_breakdown": True}) as stream:
            assert stream.get_final_response().output_text == ANSWER
    # The stored response is the provider's, without the breakdown.
    assert "request_breakdown" not in (client.responses.retrieve(answer.id).model_extra or {})


# -- PostgreSQL, the 1.x SDK line, the replay of a complete response -----------------------------------------

@pytest.mark.shared
def test_stored_responses_on_postgresql(gateway_factory, fake_upstream, postgres_schema, tmp_path) -> None:
    from respan_gateway.testing.pytest_plugin import PG_URL

    database = f'\n[database]\nurl = "{PG_URL}"\nschema = "{postgres_schema}_responses"\n'
    gw = gateway_factory(providers(fake_upstream.url) + f'spill_dir = "{tmp_path}/spill"\n' + database,
                         keys=f'{{ key = "{OTHER_KEY}", tenant = "other", name = "o" }}')
    client = gw.openai(_strict_response_validation=True)
    first = client.responses.create(model="oai/gpt-4o", input="My name is Ada.")
    with client.responses.stream(model="gpt-test", input="Name?", previous_response_id=first.id) as stream:
        second = stream.get_final_response()
    assert [m["content"] for m in fake_upstream.requests[-1].json["messages"]] == ["My name is Ada.", ANSWER, "Name?"]
    assert client.responses.retrieve(second.id).output_text == ANSWER
    with pytest.raises(openai.NotFoundError):
        gw.openai(api_key=OTHER_KEY).responses.retrieve(second.id)


OPENAI1_SCRIPT = r'''
import sys, openai
from pydantic import BaseModel
assert openai.__version__.startswith("1."), openai.__version__
client = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0, _strict_response_validation=True)
for model in ("oai/gpt-4o", "gpt-test"):
    r = client.responses.create(model=model, input="hi", instructions="be terse")
    assert r.output_text == "Hello from the fake upstream!", r
    r2 = client.responses.create(model=model, input="again", previous_response_id=r.id)
    assert r2.output_text == "Hello from the fake upstream!"
    with client.responses.stream(model=model, input="hi", extra_body={"request_breakdown": True}) as stream:
        final = stream.get_final_response()
    assert final.output_text == "Hello from the fake upstream!" and final.usage.input_tokens_details.cached_tokens == 0
    class City(BaseModel):
        city: str
    assert client.responses.parse(model=model, input="where?", text_format=City).output_parsed.city == "Paris"
    events = list(client.responses.create(model=model.split("/")[0] + "/fake-cut-after-2" if "/" in model else "fake/fake-cut-after-2",
                                          input="hi", stream=True))
    assert [e.type for e in events][-2:] == ["response.failed", "error"], [e.type for e in events]
print("openai", openai.__version__, "ok")
'''


def test_openai_1x_line(gw) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    openai1 = Path(sys.prefix) / "openai-1.x"
    if not openai1.is_dir():
        pytest.skip(f"openai 1.x is not installed in {openai1} (run `make test`)")
    env = {**os.environ, "PYTHONPATH": str(openai1)}
    result = subprocess.run([sys.executable, "-c", OPENAI1_SCRIPT, gw.base_url, TEST_KEY], env=env, capture_output=True,
                            text=True, timeout=90)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("openai 1.")


def test_replay_of_a_complete_response_is_a_valid_stream(client) -> None:
    """translate.responses.replay: the event sequence of a stored answer, as the SDK types read it."""
    from openai.types.responses import ResponseStreamEvent
    from pydantic import TypeAdapter

    from respan_gateway.translate.responses import replay

    adapter = TypeAdapter(ResponseStreamEvent)
    for kwargs in ({"input": "hi"}, {"input": "Weather?", "tools": [WEATHER]}):
        stored = client.responses.create(model="gpt-test", **kwargs).model_dump(mode="json", exclude_none=False)
        events = [adapter.validate_python(json.loads(chunk.data)) for chunk in replay(stored)]
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert events[0].type == "response.created" and events[-1].type == "response.completed"
        assert events[-1].response.id == stored["id"] and all(c.event == e.type for c, e in zip(replay(stored), events))


def test_thinking_becomes_a_reasoning_item(gateway_factory, fake_upstream) -> None:
    gw = gateway_factory(f'\n[providers.claude]\ntype = "anthropic"\nbase_url = "{fake_upstream.url}"\napi_key = "sk-ant-x"\n')
    client = gw.openai(_strict_response_validation=True)
    answer = client.responses.create(model="claude/claude-x", input="Think first.", reasoning={"effort": "low"})
    assert fake_upstream.requests[-1].json["thinking"]["type"] == "enabled"
    reasoning, message = answer.output
    assert reasoning.type == "reasoning" and reasoning.content[0].text == "Let me think."
    assert message.type == "message" and answer.output_text == ANSWER
    with client.responses.stream(model="claude/claude-x", input="Think first.", reasoning={"effort": "low"}) as stream:
        types = [e.type for e in stream]
        final = stream.get_final_response()
    assert "response.reasoning_text.delta" in types and final.output[0].type == "reasoning"
    assert final.output[0].content[0].text == "Let me think." and final.output_text == ANSWER
    # The reasoning item goes back in a follow-up without harm (no chat provider takes it back).
    follow = [*[item.model_dump(exclude_none=True) for item in final.output], {"role": "user", "content": "And?"}]
    client.responses.create(model="claude/claude-x", input=follow)
    assert [m["role"] for m in fake_upstream.requests[-1].json["messages"]] == ["assistant", "user"]
