"""Prompts on the native Anthropic endpoint and on the Responses wire format; the folder: reload on
SIGHUP, a broken file at start-up, `respan-gateway prompts check`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import anthropic
import msgspec
import pytest

from prompts_kit import folder, prompts_gateway, KEYS, chat, write  # noqa: F401 (fixtures)

from respan_gateway import Call, ConfigError
from respan_gateway.params import PromptParams
from respan_gateway.testing import TEST_KEY, FakeUpstream, GatewayProcess, GatewayServer, test_config

from respan_plugins.prompts.engine import compile_version
from respan_plugins.prompts.merge import apply
from respan_plugins.prompts.model import Version, VersionSpec, version_info

PROMPT = """
name = "Assistant"
[[versions]]
model = "claude-test"
params = { max_completion_tokens = 200, temperature = 0.5, stop = "END" }
messages = [
    { role = "system", content = "You help {{ team }}." },
    { role = "user", content = "Question: {{ question }}" },
]
"""


@pytest.fixture
def claude(prompts_gateway, folder: Path, fake_upstream: FakeUpstream) -> GatewayServer:
    write(folder, "assistant.toml", PROMPT)
    return prompts_gateway(f"""
[providers.claude]
type = "anthropic"
base_url = "{fake_upstream.url}"
api_key = "sk-ant-config-key"

[models."claude-test"]
provider = "claude"
upstream_model = "claude-sonnet-4-5"
""")


def _client(gw: GatewayServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url + "/api/anthropic", api_key=TEST_KEY, max_retries=0)


def test_anthropic_native_system_becomes_system(claude, fake_upstream: FakeUpstream) -> None:
    prompt = {"prompt_id": "assistant", "override": True, "echo": True, "variables": {"team": "ops", "question": "why?"}}
    message = _client(claude).messages.create(
        model="claude-test", max_tokens=4096, messages=[{"role": "user", "content": "placeholder"}],
        metadata={"respan_params": {"prompt": prompt}})  # type: ignore[typeddict-unknown-key]
    body = fake_upstream.requests[-1].json
    assert body["system"] == "You help ops."
    assert body["messages"] == [{"role": "user", "content": "Question: why?"}]
    assert body["max_tokens"] == 200 and body["temperature"] == 0.5 and body["stop_sequences"] == ["END"]
    assert message.model_extra["prompt_message"][0] == {"role": "system", "content": "You help ops."}


def test_anthropic_native_schema_2_appends_system_and_messages(claude, fake_upstream: FakeUpstream) -> None:
    prompt = {"prompt_id": "assistant", "schema_version": 2, "variables": {"team": "sales", "question": "q"}, "echo": True}
    with _client(claude).messages.stream(
            model="claude-test", max_tokens=64, system="Be brief.", messages=[{"role": "user", "content": "then this"}],
            metadata={"respan_params": {"prompt": prompt}}) as stream:  # type: ignore[typeddict-unknown-key]
        text = "".join(stream.text_stream)
    assert text == "Hello from the fake upstream!"
    body = fake_upstream.requests[-1].json
    assert body["system"] == "You help sales.\n\nBe brief."
    assert body["messages"] == [{"role": "user", "content": "Question: q"}, {"role": "user", "content": "then this"}]
    assert body["max_tokens"] == 200  # schema 2: the prompt wins


def _responses_call(body: dict) -> Call:
    raw = json.dumps(body).encode()
    return Call(kind="responses", request_id="r", headers={}, raw_body=raw,
                body={k: msgspec.Raw(json.dumps(v).encode()) for k, v in body.items()})


def _version(**spec) -> Version:
    from respan_plugins.prompts.render import Limits, TemplateEnvironment

    version = Version(version_info(1, msgspec.convert(spec, VersionSpec), key=""))
    compile_version(TemplateEnvironment(Limits()), version)
    return version


RENDERED = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "Look:"},
                                         {"type": "image_url", "image_url": {"url": "https://x/cat.png"}}]}]


def test_responses_system_messages_become_instructions() -> None:
    # A unit-level check of the body transform of kind `responses` (OpenAI Responses wire format): the
    # /api/responses endpoint is being built elsewhere; end to end waits for it.
    version = _version(model="gpt-test", params={"max_tokens": 100, "temperature": 0.1}, messages=RENDERED)
    call = _responses_call({"model": "gpt-test", "input": "and my question", "instructions": "Answer in French."})
    apply(call, PromptParams(prompt_id="p", schema_version=2), version, RENDERED)
    assert call.get("instructions") == "You are terse.\n\nAnswer in French."
    assert call.get("input") == [
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "Look:"}, {"type": "input_image", "image_url": "https://x/cat.png", "detail": "auto"}]},
        {"role": "user", "content": "and my question"},
    ]
    assert call.get("max_output_tokens") == 100 and call.get("max_tokens") is None and call.get("temperature") == 0.1
    # Schema 1, the request's own input and instructions win; the prompt's fill what it leaves out.
    call = _responses_call({"model": "gpt-test", "input": "only mine"})
    apply(call, PromptParams(prompt_id="p"), version, RENDERED)
    assert call.get("instructions") == "You are terse." and call.get("input") == [{"role": "user", "content": "only mine"}]
    call = _responses_call({"model": "gpt-test"})
    apply(call, PromptParams(prompt_id="p"), version, RENDERED)
    assert call.get("instructions") == "You are terse." and len(call.get("input")) == 1


def test_sighup_reloads_a_served_gateway(folder: Path, fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    path = write(folder, "greet.toml", '[[versions]]\nmodel = "gpt-test"\nmessages = [{ role = "user", content = "one" }]\n')
    config = tmp_path / "gateway.toml"
    config.write_text(test_config(fake_upstream.url, f'[prompts]\nfolder = "{folder}"\n[logging]\nspill_dir = "{tmp_path}/spill"\n',
                                  keys=KEYS))
    with GatewayProcess(str(config), workers=2) as gw:
        path.write_text(path.read_text().replace('"one"', '"two"'))
        deadline = time.monotonic() + 20
        seen: set[str] = set()
        while time.monotonic() < deadline and seen != {"two"}:
            # To the master, which passes it to each worker. Sent again while a worker still answers
            # "one": a worker that was still starting (reading the folder) when it came may have missed it.
            gw.process.send_signal(signal.SIGHUP)
            seen = set()
            for _ in range(6):  # both workers (connections are spread over them)
                assert chat(gw, {"prompt": {"prompt_id": "greet"}}).status_code == 200
                seen.add(fake_upstream.requests[-1].json["messages"][0]["content"])
            time.sleep(0.05)
        assert seen == {"two"}
        assert gw.process.poll() is None and len(gw.worker_pids()) == 2  # nobody died of the signal
        # A bad edit fails the reload as a whole: each worker logs why and keeps what it had.
        path.write_text('[[versions]]\nmessages = [{ role = "user", content = "{% if %}" }]\n')
        gw.reload()
        deadline = time.monotonic() + 20
        while gw.log().count("config_reload_failed") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert gw.log().count("config_reload_failed") >= 2 and "greet.toml" in gw.log()
        for _ in range(6):
            assert chat(gw, {"prompt": {"prompt_id": "greet"}}).status_code == 200
            assert fake_upstream.requests[-1].json["messages"][0]["content"] == "two"


def test_a_broken_file_stops_the_start_naming_file_and_key(gateway_factory, folder: Path) -> None:
    write(folder, "broken.toml", '[[versions]]\nmessages = [{ role = "user", content = "x" }, { role = "bot", content = "y" }]\n')
    with pytest.raises(ConfigError, match=r"broken\.toml: `versions\[0\]\.messages\[1\]\.role`"):
        gateway_factory(f'[prompts]\nfolder = "{folder}"\n')


def test_prompts_check_on_a_folder(folder: Path) -> None:
    write(folder, "good.yaml", "versions:\n  - messages:\n      - role: user\n        content: '{{ x }}'\n")
    write(folder, "bad.toml", '[[versions]]\nmessages = [{ role = "user", content = "{{ x" }]\n')
    write(folder, "typo.toml", '[[versions]]\nmesages = []\n')
    run = subprocess.run([sys.executable, "-m", "respan_gateway.cli", "prompts", "check", str(folder)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "ok    good.yaml: prompt `good`" in run.stdout
    assert "bad.toml: `versions[0].messages[0].content`: template syntax error, line 1" in run.stderr
    assert "typo.toml: `versions[0].mesages`: unknown key" in run.stderr
    (folder / "bad.toml").unlink()
    (folder / "typo.toml").unlink()
    run = subprocess.run([sys.executable, "-m", "respan_gateway.cli", "prompts", "check", str(folder)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
