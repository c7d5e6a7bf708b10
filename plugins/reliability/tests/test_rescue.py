"""Rescue every failure a client can be rescued from (issue 15), through the real openai SDK over real
sockets against the fake upstream.

Providers: ``fake`` (OpenAI-compatible), ``claude`` (the Anthropic adapter on the fake's Anthropic
wire, which accepts an assistant prefill and continues it) and ``gem`` (Gemini). Nothing here
measures a duration: the assertions count upstream requests and the attempts on the call.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pytest

from respan_gateway.testing import TEST_KEY, CallRecorder, FakeUpstream, GatewayServer

MESSAGES = [{"role": "user", "content": "Say hello"}]
ANSWER = "Hello from the fake upstream!"
CONFIG = """
[providers.claude]
type = "anthropic"
base_url = "{url}"
api_key = "sk-ant-fake-key"

[providers.gem]
type = "gemini"
base_url = "{url}/v1beta"
api_key = "fake-gemini-key"

[reliability]
first_byte_timeout = {first_byte}
idle_timeout = {idle}
retry_after = 0.05
{reliability}
"""


@pytest.fixture
def recorder() -> CallRecorder:
    return CallRecorder()


@pytest.fixture
def start(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream, recorder: CallRecorder) -> Callable[..., GatewayServer]:
    def make(extra: str = "", reliability: str = "", first_byte: float = 1.0, idle: float = 0.6) -> GatewayServer:
        """The config plus ``extra`` tables; ``reliability``: more keys of ``[reliability]``."""
        config = CONFIG.format(url=fake_upstream.url, reliability=reliability, first_byte=first_byte, idle=idle)
        return gateway_factory(config + extra, plugins=(recorder,))

    return make


@pytest.fixture
def gw(start: Callable[..., GatewayServer]) -> GatewayServer:
    return start()


class Streamed:
    """What a client read from a stream: the text, the role deltas, the finish reasons, the usage."""

    def __init__(self) -> None:
        self.text = ""
        self.roles = 0
        self.finishes: list[str] = []
        self.usage: Any = None
        self.ids: set[str] = set()
        self.model = ""


def stream(gw: GatewayServer, model: str, **params: Any) -> Streamed:
    out = Streamed()
    chunks = gw.openai().chat.completions.create(model=model, messages=MESSAGES, stream=True,
                                                 stream_options={"include_usage": True}, extra_body=params)
    for chunk in chunks:
        out.ids.add(chunk.id)
        out.model = chunk.model
        if chunk.usage is not None:
            out.usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.role is not None:
                out.roles += 1
            out.text += choice.delta.content or ""
            if choice.finish_reason:
                out.finishes.append(choice.finish_reason)
    return out


def stream_error(gw: GatewayServer, model: str, **params: Any) -> tuple[str, openai.APIError]:
    text = ""
    chunks = gw.openai().chat.completions.create(model=model, messages=MESSAGES, stream=True, extra_body=params)
    with pytest.raises(openai.APIError) as info:
        for chunk in chunks:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
    return text, info.value


def ask(gw: GatewayServer, model: str, streamed: bool = False, **params: Any) -> tuple[str, str]:
    if streamed:
        s = stream(gw, model, **params)
        return s.text, s.model
    completion = gw.openai().chat.completions.create(model=model, messages=MESSAGES, extra_body=params)
    return completion.choices[0].message.content or "", completion.model


def upstream_models(fake: FakeUpstream) -> list[str]:
    return [r.json["model"] if "model" in (r.json or {}) else r.path for r in fake.requests]


def fail_times(n: int) -> dict[str, Any]:
    return {"extra_headers": {"x-fake-fail-times": str(n), "x-fake-fail-key": uuid.uuid4().hex}}


both = pytest.mark.parametrize("streamed", [False, True], ids=["json", "stream"])


# -- 1. a silent upstream costs one timeout ----------------------------------------------------------

@both
def test_silent_upstream_fails_over_after_one_timeout(gw: GatewayServer, fake_upstream: FakeUpstream,
                                                      recorder: CallRecorder, streamed: bool) -> None:
    # Retries asked for: still, a timeout with a fallback left goes to the fallback at once.
    text, model = ask(gw, "fake/fake-hang", streamed, fallback_models=["gpt-test"], retry_params={"num_retries": 3})
    assert (text, model) == (ANSWER, "gpt-test-upstream")
    assert upstream_models(fake_upstream) == ["fake-hang", "gpt-test-upstream"]
    assert recorder.attempts() == [("fake/fake-hang", 504), ("gpt-test", 200)]


def test_timeout_is_retried_when_the_request_asks(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    text, _ = ask(gw, "fake/fake-hang", fallback_models=["gpt-test"],
                  retry_params={"num_retries": 1, "retry_on_timeout": True})
    assert text == ANSWER
    assert upstream_models(fake_upstream) == ["fake-hang", "fake-hang", "gpt-test-upstream"]


def test_timeout_is_retried_when_the_model_config_asks(start: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = start('[reliability.models."fake/fake-hang"]\nretry_on_timeout = true\nretry_params = { num_retries = 1 }\n')
    text, _ = ask(gw, "fake/fake-hang", fallback_models=["gpt-test"])
    assert text == ANSWER
    assert upstream_models(fake_upstream) == ["fake-hang", "fake-hang", "gpt-test-upstream"]


def test_without_a_fallback_a_timeout_is_still_retried(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    text, _ = ask(gw, "fake/fake-hang", retry_params={"num_retries": 1}, **fail_times(1))
    assert text == ANSWER
    assert len(fake_upstream.requests) == 2


@both
def test_cooldown_learns_from_a_timeout(start: Callable[..., GatewayServer], fake_upstream: FakeUpstream, streamed: bool) -> None:
    gw = start("[deployments]\nallowed_fails = 1\ncooldown_seconds = 60\n")
    for _ in range(3):
        assert ask(gw, "fake/fake-hang", streamed, fallback_models=["gpt-test"])[0] == ANSWER
    # One timeout cooled the silent model down: the next requests went to the fallback first.
    assert upstream_models(fake_upstream) == ["fake-hang", "gpt-test-upstream", "gpt-test-upstream", "gpt-test-upstream"]


# -- 2. time to first token ------------------------------------------------------------------------------

# A complete answer may take 5 s; a stream's first token only 1 s.
TTFT = "first_token_timeout = 1.0\n"


def test_slow_first_token_fails_over_within_the_ttft_limit(start: Callable[..., GatewayServer], fake_upstream: FakeUpstream,
                                                         recorder: CallRecorder) -> None:
    gw = start(reliability=TTFT, first_byte=5.0)
    # The headers and the role chunk come at once, the first word never: nothing reached the client.
    s = stream(gw, "fake/fake-stall-after-0", fallback_models=["gpt-test"])
    assert (s.text, s.model, s.roles, s.finishes) == (ANSWER, "gpt-test-upstream", 1, ["stop"])
    assert recorder.attempts() == [("fake/fake-stall-after-0", 504), ("gpt-test", 200)]
    assert "first_token_timeout" in (recorder.last.attempts[0].error or "")
    assert fake_upstream.wait_for_disconnect(5)


def test_first_token_limit_is_not_the_complete_answers(start: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = start(reliability=TTFT, first_byte=5.0)
    # 1.5 s to the whole answer is within the first-byte limit (5 s) ...
    assert ask(gw, "fake/fake-slow-first-byte-1500", False, fallback_models=["gpt-test"]) == (ANSWER, "fake-slow-first-byte-1500")
    # ... 1.5 s to a stream's first word is not within the first-token limit (1 s).
    assert ask(gw, "fake/fake-slow-chunks-1500", True, fallback_models=["gpt-test"]) == (ANSWER, "gpt-test-upstream")
    assert upstream_models(fake_upstream) == ["fake-slow-first-byte-1500", "fake-slow-chunks-1500", "gpt-test-upstream"]


@pytest.mark.parametrize("level", ["model", "provider", "request"])
def test_first_token_limit_per_model_provider_and_request(start: Callable[..., GatewayServer], fake_upstream: FakeUpstream,
                                                          level: str) -> None:
    extra = {
        "model": '[reliability.models."fake/fake-slow-chunks-1500"]\nfirst_token_timeout = 4.0\n',
        "provider": "[reliability.providers.fake]\nfirst_token_timeout = 4.0\n",
        "request": "",
    }[level]
    gw = start(extra, reliability=TTFT, first_byte=5.0, idle=5.0)
    params: dict[str, Any] = {"first_token_timeout": 4.0} if level == "request" else {}
    # Within its own 4 s limit: waited for.
    assert ask(gw, "fake/fake-slow-chunks-1500", True, fallback_models=["gpt-test"], **params) == (ANSWER, "fake-slow-chunks-1500")


def test_bad_first_token_timeout_is_a_400(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        ask(gw, "gpt-test", True, first_token_timeout=0)
    assert info.value.body["param"] == "first_token_timeout"
    assert fake_upstream.requests == []


# -- 3/4. mid-stream continuation ------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["cut-after-3", "stall-after-3", "malformed-after-3"])
def test_broken_stream_is_continued_on_a_prefill_fallback(gw: GatewayServer, fake_upstream: FakeUpstream,
                                                          recorder: CallRecorder, fault: str) -> None:
    s = stream(gw, f"fake/fake-{fault}", fallback_models=["gpt-test", "claude/claude-test"])
    # One coherent answer: the words of a clean one, one role delta, one finish reason, one id.
    assert s.text == ANSWER
    assert (s.roles, s.finishes, len(s.ids)) == (1, ["stop"], 1)
    # The continuation went to the model that takes a prefill (gpt-test does not), with the text delivered.
    assert upstream_models(fake_upstream) == [f"fake-{fault}", "claude-test"]
    sent = fake_upstream.requests[-1].json["messages"]
    assert sent[-1] == {"role": "assistant", "content": [{"type": "text", "text": "Hello from the"}]}
    attempts = recorder.last.attempts
    assert [(a.model, a.status, a.prefill) for a in attempts] == [
        (f"fake/fake-{fault}", attempts[0].status, None), ("claude/claude-test", 200, len("Hello from the "))]
    assert attempts[0].status in (502, 504) and attempts[0].error
    # The usage counts both attempts (the first one's estimated: it never reported any).
    assert s.usage is not None and s.usage.completion_tokens > 2 and s.usage.prompt_tokens > 3
    assert recorder.last.outcome.usage is not None and recorder.last.outcome.usage.completion_tokens == s.usage.completion_tokens


def test_broken_anthropic_stream_is_continued_too(gw: GatewayServer, fake_upstream: FakeUpstream, recorder: CallRecorder) -> None:
    # The Anthropic wire cut after "Hello from " (message_start, ping, the block's start, two deltas).
    s = stream(gw, "claude/fake-cut-after-4", fallback_models=["claude/claude-test"])
    assert (s.text, s.roles, s.finishes, len(s.ids)) == (ANSWER, 1, ["stop"], 1)
    assert fake_upstream.requests[-1].json["messages"][-1]["content"] == [{"type": "text", "text": "Hello from"}]
    assert [a.prefill for a in recorder.last.attempts] == [None, len("Hello from ")]


def test_continuation_is_on_the_log_record(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    with httpx2.stream("POST", gw.base_url + "chat/completions", headers={"authorization": f"Bearer {TEST_KEY}"}, timeout=30,
                       json={"model": "fake/fake-cut-after-3", "messages": MESSAGES, "stream": True,
                             "fallback_models": ["claude/claude-test"]}) as response:
        body = "".join(response.iter_text())
        log_id = response.headers["x-respan-log-id"]
    assert '"error"' not in body and body.endswith("data: [DONE]\n\n")
    record = gw.record(log_id)
    warnings = record["warnings"]
    assert [(w["model"], w["status_code"], w.get("prefill_length")) for w in warnings] == [
        ("fake/fake-cut-after-3", 502, None), ("claude/claude-test", 200, 15)]
    assert record["model"] == "claude/claude-test"


def test_cut_with_a_fallback_that_rejects_the_prefill_gives_the_original_error(gw: GatewayServer, fake_upstream: FakeUpstream,
                                                                            recorder: CallRecorder) -> None:
    text, error = stream_error(gw, "fake/fake-cut-after-3", fallback_models=["claude/fake-reject-prefill"])
    assert text == "Hello from the "
    # The stream's own error, never the fallback's 400.
    assert "broke off" in error.message and "prefill" not in error.message
    assert upstream_models(fake_upstream) == ["fake-cut-after-3", "fake-reject-prefill"]
    assert recorder.attempts() == [("fake/fake-cut-after-3", 502), ("claude/fake-reject-prefill", 400)]


def test_cut_without_a_prefill_fallback_gives_the_original_error(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    text, error = stream_error(gw, "fake/fake-cut-after-3", fallback_models=["gpt-test"])
    assert text == "Hello from the " and "broke off" in error.message
    # gpt-test (OpenAI chat) takes no prefill: not even tried.
    assert upstream_models(fake_upstream) == ["fake-cut-after-3"]


def test_tool_call_in_flight_is_not_continued(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    stream_ = gw.openai().chat.completions.create(model="fake/fake-cut-after-1,tool_call", messages=MESSAGES, stream=True,
                                                  extra_body={"fallback_models": ["claude/claude-test"]})
    with pytest.raises(openai.APIError) as info:
        for _ in stream_:
            pass
    assert "broke off" in info.value.message
    assert upstream_models(fake_upstream) == ["fake-cut-after-1,tool_call"]


def test_continue_streams_false_turns_it_off(start: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = start(reliability="continue_streams = false\n")
    text, error = stream_error(gw, "fake/fake-malformed-after-2", fallback_models=["claude/claude-test"])
    assert text == "Hello from " and "malformed" in error.message
    assert upstream_models(fake_upstream) == ["fake-malformed-after-2"]


def test_malformed_event_without_a_fallback_is_an_error_event_never_garbage(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    response = httpx2.post(gw.base_url + "chat/completions", headers={"authorization": f"Bearer {TEST_KEY}"}, timeout=30,
                           json={"model": "fake/fake-malformed-after-2", "messages": MESSAGES, "stream": True})
    assert "{not json" not in response.text
    assert '"code":"malformed_chunk"' in response.text and "[DONE]" not in response.text


def test_malformed_event_before_the_first_token_fails_over_with_nothing_sent(gw: GatewayServer, fake_upstream: FakeUpstream,
                                                                            recorder: CallRecorder) -> None:
    # Not JSON right after the role chunk: in the head held until the first token, where it is
    # checked, so the attempt fails before the client got anything and the fallback answers whole.
    s = stream(gw, "fake/fake-malformed-after-0", fallback_models=["gpt-test"])
    assert (s.text, s.roles, s.finishes, len(s.ids)) == (ANSWER, 1, ["stop"], 1)
    assert upstream_models(fake_upstream) == ["fake-malformed-after-0", "gpt-test-upstream"]
    assert recorder.attempts() == [("fake/fake-malformed-after-0", 502), ("gpt-test", 200)]
    assert "malformed" in (recorder.last.attempts[0].error or "")


# -- 5. context too long falls back; content policy does not ----------------------------------------------

@pytest.mark.parametrize("primary", ["fake/fake-context-length", "claude/fake-context-length", "gem/fake-context-length"],
                         ids=["openai", "anthropic", "gemini"])
@both
def test_context_length_goes_to_the_fallback_with_one_attempt(gw: GatewayServer, fake_upstream: FakeUpstream,
                                                              recorder: CallRecorder, primary: str, streamed: bool) -> None:
    text, model = ask(gw, primary, streamed, fallback_models=["gpt-test"], retry_params={"num_retries": 3})
    assert (text, model) == (ANSWER, "gpt-test-upstream")
    assert recorder.attempts() == [(primary, 400), ("gpt-test", 200)]
    assert len(fake_upstream.requests) == 2


def test_context_length_without_a_fallback_keeps_its_code(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        ask(gw, "claude/fake-context-length")
    assert info.value.code == "context_length_exceeded" and "prompt is too long" in info.value.message
    assert len(fake_upstream.requests) == 1


@pytest.mark.parametrize("primary", ["fake/fake-content-policy", "claude/fake-content-policy"], ids=["openai", "anthropic"])
def test_content_policy_400_is_a_clean_error_with_one_attempt(gw: GatewayServer, fake_upstream: FakeUpstream,
                                                              recorder: CallRecorder, primary: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        ask(gw, primary, fallback_models=["gpt-test"], retry_params={"num_retries": 3})
    assert info.value.status_code == 400 and info.value.code != "context_length_exceeded"
    assert recorder.attempts() == [(primary, 400)]
    assert len(fake_upstream.requests) == 1


# -- 7. static routing: per-model fallbacks, default retry_params ----------------------------------------

def test_per_model_fallbacks_from_the_config(start: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = start('[routing]\nfallback_models = ["mock/backup"]\n[routing.fallbacks]\n"fake/fake-error-503" = ["gpt-test"]\n')
    # The primary's own list ...
    assert ask(gw, "fake/fake-error-503")[1] == "gpt-test-upstream"
    # ... else the default list ...
    assert ask(gw, "fake/fake-error-502")[1] == "backup"
    # ... and a request's own list wins over both.
    assert ask(gw, "fake/fake-error-503", fallback_models=["fake/fake-model"])[1] == "fake-model"
    assert upstream_models(fake_upstream) == ["fake-error-503", "gpt-test-upstream", "fake-error-502", "fake-error-503", "fake-model"]


def test_default_retry_params_from_the_config(start: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = start('[reliability.models."fake/fake-error-502".retry_params]\nnum_retries = 2\n',
               reliability="retry_params = { num_retries = 1, retry_after = 0.01 }\n")
    # No retry_params in the request: the section's default (1 retry) ...
    assert ask(gw, "fake/fake-error-500", **fail_times(1))[0] == ANSWER
    assert len(fake_upstream.requests) == 2
    fake_upstream.reset()
    # ... the model's own (2 retries, the first wait still the section's) ...
    assert ask(gw, "fake/fake-error-502", **fail_times(2))[0] == ANSWER
    assert len(fake_upstream.requests) == 3
    fake_upstream.reset()
    # ... and the request's fields win.
    with pytest.raises(openai.InternalServerError):
        ask(gw, "fake/fake-error-500", retry_params={"retry_enabled": False}, **fail_times(1))
    assert len(fake_upstream.requests) == 1


@pytest.mark.parametrize(("extra", "error"), [
    ('[routing.fallbacks]\n"nope" = ["gpt-test"]\n', r"`routing\.fallbacks\.nope`: unknown model `nope`"),
    ('[routing.fallbacks]\n"gpt-test" = ["nope"]\n', r"`routing\.fallbacks\.gpt-test\[0\]`: unknown model `nope`"),
    ('[reliability.models.nope]\nidle_timeout = 1\n', r"`reliability\.models\.nope`: unknown model `nope`"),
    ('[reliability.models.gpt-test]\nfirst_token_timeout = 0\n', r"`reliability\.models\.gpt-test\.first_token_timeout`: must be greater than 0"),
], ids=["fallback_key", "fallback_slug", "model", "model_timeout"])
def test_bad_static_routing_stops_the_start(start: Callable[..., GatewayServer], extra: str, error: str) -> None:
    from respan_gateway import ConfigError

    with pytest.raises(ConfigError, match=error):
        start(extra)


# -- 6. recovery without waste: the half-open probe -------------------------------------------------------

FLAKY = """
[providers.flaky]
type = "openai_compatible"
base_url = "{url}/v1"
headers = {{ x-fake-scenario = "error-503", x-fake-fail-times = "{fails}", x-fake-fail-key = "{key}" }}

[models.primary]
provider = "flaky"
upstream_model = "primary-upstream"

[deployments]
allowed_fails = 1
cooldown_seconds = 30
"""


class Clock:
    """The pools' clock, moved by the test (no sleeping through cooldowns)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def pool_of(gw: GatewayServer) -> Any:
    return dict(gw.gateway.middlewares)["deployments"].pool


def burst(gws: list[GatewayServer], n: int) -> list[str]:
    """n requests at once (spread over ``gws``): the model that answered each."""
    answers: list[str] = []
    errors: list[BaseException] = []

    def one(gw: GatewayServer) -> None:
        try:
            answers.append(ask(gw, "primary", fallback_models=["gpt-test"])[1])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(gws[i % len(gws)],)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return answers


def flapping(gws: list[GatewayServer], fake: FakeUpstream) -> None:
    clock = Clock()
    for gw in gws:
        pool_of(gw).clock = clock

    def primary() -> int:
        return upstream_models(fake).count("primary-upstream")

    # The outage: the first request fails on the primary and is served by the fallback ...
    assert ask(gws[0], "primary", fallback_models=["gpt-test"])[1] == "gpt-test-upstream"
    assert primary() == 1
    # ... and every request during the cooldown is served by the fallback alone (every gateway).
    assert burst(gws, 6) == ["gpt-test-upstream"] * 6
    assert primary() == 1
    # A cooldown later, still down: of a burst, one request probes; all are served.
    clock.now += 31
    assert burst(gws, 6) == ["gpt-test-upstream"] * 6
    assert primary() == 2
    assert burst(gws, 4) == ["gpt-test-upstream"] * 4
    assert primary() == 2
    # Another cooldown: the primary has recovered (2 failures were its outage). One probe finds it well ...
    clock.now += 31
    answers = burst(gws, 6)
    assert "primary-upstream" in answers and set(answers) <= {"primary-upstream", "gpt-test-upstream"}
    # ... and from then on it serves every request again.
    assert burst(gws, 6) == ["primary-upstream"] * 6


def test_flapping_primary_one_probe_per_cooldown(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory(FLAKY.format(url=fake_upstream.url, fails=2, key=uuid.uuid4().hex))
    flapping([gw], fake_upstream)


def test_flapping_primary_one_probe_per_cooldown_across_gateways_on_one_redis(
    gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream, redis_state: Any
) -> None:
    config = FLAKY.format(url=fake_upstream.url, fails=2, key=uuid.uuid4().hex) + redis_state
    first, second = gateway_factory(config), gateway_factory(config)
    flapping([first, second], fake_upstream)
    # The state is in Redis, under the test's prefix (and gone once the primary recovered).
    assert all(not key.decode().endswith(":probe") for key in redis_state.keys())


def test_shared_cooldown_is_seen_by_another_gateway(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream,
                                                    redis_state: Any) -> None:
    config = "[deployments]\nallowed_fails = 1\ncooldown_seconds = 30\n" + redis_state
    first, second = gateway_factory(config), gateway_factory(config)
    assert ask(first, "fake/fake-error-503", fallback_models=["gpt-test"])[1] == "gpt-test-upstream"
    fake_upstream.reset()
    # Cooled down in Redis: the second gateway skips it too.
    assert ask(second, "fake/fake-error-503", fallback_models=["gpt-test"])[1] == "gpt-test-upstream"
    assert upstream_models(fake_upstream) == ["gpt-test-upstream"]
    assert any(b"deployments:fake:-:fake-error-503" in key for key in redis_state.keys())


# -- other endpoints ------------------------------------------------------------------------------------

def test_native_anthropic_stream_fails_over_on_a_late_first_token(start: Callable[..., GatewayServer], fake_upstream: FakeUpstream,
                                                                  recorder: CallRecorder) -> None:
    import anthropic

    gw = start(reliability=TTFT, first_byte=5.0)
    client = anthropic.Anthropic(base_url=gw.url + "/api/anthropic", api_key=TEST_KEY, max_retries=0)
    # message_start comes at once, the first word never.
    with client.messages.stream(model="claude/fake-stall-after-0", max_tokens=50, messages=MESSAGES,
                                extra_body={"fallback_models": ["claude/claude-test"]}) as s:
        text = "".join(s.text_stream)
    assert text == ANSWER
    assert recorder.attempts() == [("claude/fake-stall-after-0", 504), ("claude/claude-test", 200)]
