"""Prompts from files on chat completions: versions, the merge rules of schema 1 and 2, rendering,
composition, images, echo, the log record. The real openai SDK (or raw HTTP, for the standard API
without `model`/`messages`) over a real socket; what reached the fake upstream is what is checked."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
import pytest

from respan_gateway.testing import TEST_KEY, FakeUpstream

from prompts_kit import folder, prompts_gateway, chat, write  # noqa: F401 (fixtures)

SUPPORT = """
name = "Support reply"
deployed = 2

[[versions]]
model = "gpt-test"
messages = [{ role = "user", content = "v1 for {{ customer }}" }]

[[versions]]
model = "gpt-test"
params = { temperature = 0.2, max_tokens = 300 }
variables = { tone = "friendly", orders = [] }
messages = [
    { role = "system", content = "You are a {{ tone }} agent.{% if orders %} Orders: {{ orders | join(', ') }}.{% endif %}" },
    { role = "user", content = "{{ customer }} asks: {{ question }}" },
]

[[versions]]
model = "fake/newest-model"
messages = [{ role = "user", content = "v3 for {{ customer }}" }]
"""


@pytest.fixture
def gw(prompts_gateway, folder: Path):
    write(folder, "support-reply.toml", SUPPORT)
    return prompts_gateway()


def upstream_body(fake: FakeUpstream) -> dict:
    return fake.requests[-1].json


def test_a_file_prompt_without_model_or_messages(gw, fake_upstream: FakeUpstream) -> None:
    r = chat(gw, {"prompt": {"prompt_id": "support-reply", "variables": {"customer": "Ada", "question": "Where is my order?",
                                                                       "orders": ["A-1", "B-2"]}}})
    assert r.status_code == 200, r.text
    body = upstream_body(fake_upstream)
    assert body["model"] == "gpt-test-upstream"
    assert body["messages"] == [
        {"role": "system", "content": "You are a friendly agent. Orders: A-1, B-2."},
        {"role": "user", "content": "Ada asks: Where is my order?"},
    ]
    assert body["temperature"] == 0.2 and body["max_tokens"] == 300
    assert "prompt" not in body
    assert "prompt_message" not in r.json()  # echo is off by default


def test_a_file_prompt_with_model_and_messages_the_request_wins_by_default(gw, fake_upstream: FakeUpstream) -> None:
    client = gw.openai()
    client.chat.completions.create(
        model="fake/requested", messages=[{"role": "user", "content": "my own words"}], temperature=0.9,
        extra_body={"prompt": {"prompt_id": "support-reply", "variables": {"customer": "Ada", "question": "?"}}})
    body = upstream_body(fake_upstream)
    # schema 1, override false (the default): what the request sets wins; the prompt fills the rest.
    assert body["model"] == "requested"
    assert body["messages"] == [{"role": "user", "content": "my own words"}]
    assert body["temperature"] == 0.9 and body["max_tokens"] == 300


def test_deployed_pinned_and_latest(gw, fake_upstream: FakeUpstream) -> None:
    variables = {"customer": "Bo", "question": "hi"}
    assert chat(gw, {"prompt": {"prompt_id": "support-reply", "variables": variables}}).status_code == 200
    assert upstream_body(fake_upstream)["messages"][-1]["content"] == "Bo asks: hi"  # deployed = 2
    assert chat(gw, {"prompt": {"prompt_id": "support-reply", "variables": variables, "version": 1}}).status_code == 200
    assert upstream_body(fake_upstream)["messages"] == [{"role": "user", "content": "v1 for Bo"}]
    assert chat(gw, {"prompt": {"prompt_id": "support-reply", "variables": variables, "version": "latest"}}).status_code == 200
    assert upstream_body(fake_upstream) == {"model": "newest-model", "messages": [{"role": "user", "content": "v3 for Bo"}]}


def test_unknown_prompt_or_version_is_a_404_naming_it(gw) -> None:
    r = chat(gw, {"prompt": {"prompt_id": "nope"}})
    assert r.status_code == 404 and "prompt `nope` not found" in r.json()["error"]["message"]
    r = chat(gw, {"prompt": {"prompt_id": "support-reply", "version": 9}})
    assert r.status_code == 404 and "has no version 9" in r.json()["error"]["message"]


def test_a_missing_variable_is_a_400_naming_it(gw) -> None:
    r = chat(gw, {"prompt": {"prompt_id": "support-reply", "variables": {"customer": "Ada"}}})
    assert r.status_code == 400
    error = r.json()["error"]
    assert "`question`" in error["message"] and error["param"] == "prompt.variables"


@pytest.mark.parametrize("override, mode, expect_model, expect_messages", [
    (False, None, "requested", [{"role": "user", "content": "request"}]),
    (True, None, "gpt-test-upstream", [{"role": "user", "content": "v1 for Cy"}]),
    (False, "override", "requested", [{"role": "user", "content": "from override_params"}]),
    (True, "override", "gpt-test-upstream", [{"role": "user", "content": "from override_params"}]),
    (False, "append", "requested", [{"role": "user", "content": "request"}, {"role": "user", "content": "from override_params"}]),
    (True, "append", "gpt-test-upstream", [{"role": "user", "content": "v1 for Cy"}, {"role": "user", "content": "from override_params"}]),
])
def test_schema_1_override_and_messages_modes(gw, fake_upstream: FakeUpstream, override, mode, expect_model, expect_messages) -> None:
    prompt = {"prompt_id": "support-reply", "version": 1, "variables": {"customer": "Cy"}, "override": override}
    if mode is not None:
        prompt["override_params"] = {"messages": [{"role": "user", "content": "from override_params"}], "temperature": 0.5}
        prompt["override_config"] = {"messages_override_mode": mode}
    gw.openai().chat.completions.create(model="fake/requested", messages=[{"role": "user", "content": "request"}],
                                        temperature=0.1, extra_body={"prompt": prompt})
    body = upstream_body(fake_upstream)
    assert body["model"] == expect_model
    assert body["messages"] == expect_messages
    assert body["temperature"] == (0.5 if mode else 0.1)  # override_params win over request and prompt


def test_schema_1_override_true_prompt_params_win(gw, fake_upstream: FakeUpstream) -> None:
    gw.openai().chat.completions.create(
        model="fake/requested", messages=[{"role": "user", "content": "ignored"}], temperature=0.9, top_p=0.5,
        extra_body={"prompt": {"prompt_id": "support-reply", "override": True, "variables": {"customer": "A", "question": "q"}}})
    body = upstream_body(fake_upstream)
    assert body["model"] == "gpt-test-upstream" and body["temperature"] == 0.2 and body["top_p"] == 0.5
    assert [m["role"] for m in body["messages"]] == ["system", "user"]


def test_schema_2_prompt_first_then_request_and_patch(gw, fake_upstream: FakeUpstream) -> None:
    gw.openai().chat.completions.create(
        model="fake/requested", messages=[{"role": "user", "content": "and then this"}], temperature=0.9,
        extra_body={"prompt": {"prompt_id": "support-reply", "schema_version": 2, "override": False,
                               "variables": {"customer": "Di", "question": "q"}, "patch": {"max_tokens": 50}}})
    body = upstream_body(fake_upstream)
    assert body["model"] == "gpt-test-upstream"  # the prompt wins, whatever `override` says
    assert body["messages"] == [
        {"role": "system", "content": "You are a friendly agent."},
        {"role": "user", "content": "Di asks: q"},
        {"role": "user", "content": "and then this"},
    ]
    assert body["temperature"] == 0.2 and body["max_tokens"] == 50


@pytest.mark.parametrize("field", ["messages", "input"])
def test_schema_2_patch_with_messages_is_a_400(gw, fake_upstream: FakeUpstream, field) -> None:
    r = chat(gw, {"prompt": {"prompt_id": "support-reply", "schema_version": 2, "patch": {field: []}}})
    assert r.status_code == 400 and r.json()["error"]["param"] == f"prompt.patch.{field}"
    assert fake_upstream.requests == []


def test_echo_in_the_answer_and_in_the_stream(gw) -> None:
    prompt = {"prompt_id": "support-reply", "version": 1, "variables": {"customer": "Eve"}, "echo": True}
    rendered = [{"role": "user", "content": "v1 for Eve"}]
    answer = gw.openai().chat.completions.create(model="gpt-test", messages=[], extra_body={"prompt": prompt})
    assert answer.model_extra["prompt_message"] == rendered
    chunks = list(gw.openai().chat.completions.create(model="gpt-test", messages=[], stream=True,
                                                      stream_options={"include_usage": True}, extra_body={"prompt": prompt}))
    marked = [c for c in chunks if (c.model_extra or {}).get("prompt_message") is not None]
    assert len(marked) == 1 and marked[0].choices[0].finish_reason == "stop"
    assert marked[0].model_extra["prompt_message"] == rendered
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the fake upstream!"


def test_the_log_record_carries_the_prompt(gw) -> None:
    r = chat(gw, {"prompt": {"prompt_id": "support-reply", "variables": {"customer": "Fay", "question": "q?"}}})
    record = gw.record(r.headers["x-respan-log-id"])
    assert record["prompt_id"] == "support-reply" and record["prompt_name"] == "Support reply"
    assert record["prompt_version_number"] == 2
    assert record["variables"] == {"tone": "friendly", "orders": [], "customer": "Fay", "question": "q?"}
    assert record["prompt_messages_template"][1] == {"role": "user", "content": "{{ customer }} asks: {{ question }}"}
    assert record["prompt_messages"][1] == {"role": "user", "content": "Fay asks: q?"}
    # disable_log keeps the ids, not the content.
    r = chat(gw, {"disable_log": True, "prompt": {"prompt_id": "support-reply", "variables": {"customer": "G", "question": "q"}}})
    record = gw.record(r.headers["x-respan-log-id"])
    assert record["prompt_id"] == "support-reply" and record["prompt_version_number"] == 2
    assert record["variables"] is None and record["prompt_messages_template"] is None


# -- composition ---------------------------------------------------------------------------------------

def _compose(folder: Path) -> None:
    write(folder, "leaf.toml", '[[versions]]\nmessages = [{ role = "user", content = "leaf {{ word }}" }]\n')
    write(folder, "middle.toml", '[[versions]]\nmessages = [{ role = "system", content = "middle [{{ inner }}]" }]\n')
    write(folder, "middle2.toml", '[[versions]]\nmessages = [{ role = "system", content = "middle2 <{{ inner }}>" }]\n')
    write(folder, "top.toml", '[[versions]]\nmodel = "gpt-test"\nmessages = [{ role = "user", content = "top ({{ part }})" }]\n')
    write(folder, "loop.toml", '[[versions]]\nmodel = "gpt-test"\nmessages = [{ role = "user", content = "loop {{ again }}" }]\n')


def _ref(prompt_id: str, **variables) -> dict:
    return {"_type": "prompt", "prompt_id": prompt_id, "variables": variables}


def test_composition_at_depth_1_and_2(prompts_gateway, folder: Path, fake_upstream: FakeUpstream) -> None:
    _compose(folder)
    gw = prompts_gateway()
    r = chat(gw, {"prompt": {"prompt_id": "top", "variables": {"part": _ref("leaf", word="one")}}})
    assert r.status_code == 200, r.text
    assert upstream_body(fake_upstream)["messages"] == [{"role": "user", "content": "top (leaf one)"}]
    r = chat(gw, {"prompt": {"prompt_id": "top", "variables": {"part": _ref("middle", inner=_ref("leaf", word="two"))}}})
    assert r.status_code == 200, r.text
    assert upstream_body(fake_upstream)["messages"] == [{"role": "user", "content": "top (middle [leaf two])"}]
    record = gw.record(r.headers["x-respan-log-id"])
    assert record["variables"]["part"]["_rendered_result"] == "middle [leaf two]"


def test_composition_at_depth_3_and_a_cycle_are_400s(prompts_gateway, folder: Path, fake_upstream: FakeUpstream) -> None:
    _compose(folder)
    gw = prompts_gateway()
    # top -> middle -> middle2 -> leaf: leaf would be 3 levels below the request's prompt.
    deep = _ref("middle", inner=_ref("middle2", inner=_ref("leaf", word="three")))
    r = chat(gw, {"prompt": {"prompt_id": "top", "variables": {"part": deep}}})
    assert r.status_code == 400 and r.json()["error"]["code"] == "prompt_too_deep"
    assert "at most 2" in r.json()["error"]["message"] and "top -> middle -> middle2 -> leaf" in r.json()["error"]["message"]
    # A prompt that includes itself, directly or through another.
    r = chat(gw, {"prompt": {"prompt_id": "loop", "variables": {"again": _ref("loop", again="x")}}})
    assert r.status_code == 400 and r.json()["error"]["code"] == "prompt_cycle"
    assert "loop -> loop" in r.json()["error"]["message"]
    r = chat(gw, {"prompt": {"prompt_id": "top", "variables": {"part": _ref("middle", inner=_ref("top", part="x"))}}})
    assert r.status_code == 400 and r.json()["error"]["code"] == "prompt_cycle"
    assert fake_upstream.requests == []


# -- images --------------------------------------------------------------------------------------------

def test_an_image_variable_becomes_an_image_part(prompts_gateway, folder: Path, fake_upstream: FakeUpstream) -> None:
    write(folder, "look.toml", '[[versions]]\nmodel = "gpt-test"\nmessages = [{ role = "user", content = "Describe {{ photo }} please" }]\n')
    gw = prompts_gateway()
    r = chat(gw, {"prompt": {"prompt_id": "look", "variables": {"photo": {"_type": "image_url", "value": "https://img.example/cat.png"}}}})
    assert r.status_code == 200, r.text
    assert upstream_body(fake_upstream)["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "Describe "},
        {"type": "image_url", "image_url": {"url": "https://img.example/cat.png"}},
        {"type": "text", "text": " please"},
    ]}]
    chat(gw, {"prompt": {"prompt_id": "look", "variables": {"photo": {"_type": "image_url", "value": "iVBORw0KGgo="}}}})
    part = upstream_body(fake_upstream)["messages"][0]["content"][1]
    assert part == {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


# -- the sandbox ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ request.application.__globals__ }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}",
    "{{ 'x' * 1000000000 }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
])
def test_sandbox_escapes_are_refused_without_harm(prompts_gateway, folder: Path, fake_upstream: FakeUpstream, template) -> None:
    write(folder, "evil.toml", f'[[versions]]\nmodel = "gpt-test"\nmessages = [{{ role = "user", content = {json.dumps(template)} }}]\n')
    gw = prompts_gateway()
    r = chat(gw, {"prompt": {"prompt_id": "evil", "variables": {"request": "x"}}})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] in ("prompt_sandbox", "prompt_render_limit", "prompt_variable_missing")
    assert fake_upstream.requests == []
    # The worker is fine: the next request is served.
    assert gw.openai().chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}]).choices


def test_a_prompt_param_on_embeddings_is_a_400(gw) -> None:
    r = httpx2.post(gw.base_url + "embeddings", json={"model": "gpt-test", "input": "x", "prompt": {"prompt_id": "support-reply"}},
                    headers={"authorization": f"Bearer {TEST_KEY}"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
