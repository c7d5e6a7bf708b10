"""Retries, fallbacks, timeouts and stream failures, through the real openai SDK over real sockets.

The fake upstream acts out each fault by model name (``fake/fake-error-503``: provider ``fake``,
upstream model ``fake-error-503``) or by header (sent upstream with the Respan param
``extra_headers``). A small test plugin keeps each request's Call so a test can read the attempts the
gateway recorded, as the logging plugin would.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pytest

from respan_gateway.testing import TEST_KEY, CallRecorder, FakeUpstream, GatewayServer

MESSAGES = [{"role": "user", "content": "Say hello"}]
ANSWER = "Hello from the fake upstream!"
# Short limits so that the tests are quick; durations are asserted only as lower bounds (a wait happened).
CONFIG = """
[reliability]
first_byte_timeout = 1.0
idle_timeout = 0.6
rate_limit_backoff = 0.3
retry_after = 0.05
"""


@pytest.fixture
def recorder() -> CallRecorder:
    return CallRecorder()


@pytest.fixture
def gw(gateway_factory: Callable[..., GatewayServer], recorder: CallRecorder) -> GatewayServer:
    return gateway_factory(CONFIG, plugins=(recorder,))


def fail_times(n: int) -> dict[str, Any]:
    """Respan params making the fake fail the first n requests of this test, then answer."""
    return {"extra_headers": {"x-fake-fail-times": str(n), "x-fake-fail-key": uuid.uuid4().hex}}


def ask(gw: GatewayServer, model: str, stream: bool, **params: Any) -> tuple[str, str]:
    """(answer text, response model) through the SDK, streamed or not."""
    client = gw.openai()
    if not stream:
        completion = client.chat.completions.create(model=model, messages=MESSAGES, extra_body=params)
        return completion.choices[0].message.content or "", completion.model
    text, answered = "", ""
    for chunk in client.chat.completions.create(model=model, messages=MESSAGES, stream=True, extra_body=params):
        answered = chunk.model
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    return text, answered


def upstream_models(fake: FakeUpstream) -> list[str]:
    return [r.json["model"] for r in fake.requests]


both = pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])


# -- rate limits ------------------------------------------------------------------------------------

@both
def test_429_retry_after_is_honoured(gw: GatewayServer, fake_upstream: FakeUpstream, stream: bool) -> None:
    text, _ = ask(gw, "fake/fake-retry-after-1", stream, **fail_times(1))
    assert text == ANSWER
    first, second = fake_upstream.requests
    # The backoff alone would be 0.3-0.375 s: the wait is the provider's Retry-After.
    assert second.received - first.received >= 0.95


@both
def test_429_without_retry_after_is_retried_with_backoff(gw: GatewayServer, fake_upstream: FakeUpstream, stream: bool) -> None:
    text, _ = ask(gw, "fake/fake-error-text-429", stream, **fail_times(2))
    assert text == ANSWER
    first, _, third = fake_upstream.requests
    # Two waits: 0.3 then 0.6 s, each with up to 25% jitter.
    assert third.received - first.received >= 0.85
    assert "retry-after" not in fake_upstream.requests[0].headers


def test_429_persistent_reaches_the_client_with_retry_after(gw: GatewayServer, fake_upstream: FakeUpstream, recorder: CallRecorder) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        gw.openai().chat.completions.create(model="fake/fake-retry-after-1", messages=MESSAGES)
    # The default without retry_params: 2 retries, each after at least the provider's Retry-After.
    assert len(fake_upstream.requests) == 3
    assert info.value.response.headers["retry-after"] == "1"
    assert "fake upstream error 429" in info.value.message
    assert recorder.attempts() == [("fake/fake-retry-after-1", 429)] * 3


def test_429_goes_to_the_fallback_at_once(gw: GatewayServer, fake_upstream: FakeUpstream, recorder: CallRecorder) -> None:
    text, model = ask(gw, "fake/fake-retry-after-60", False, fallback_models=["gpt-test"])
    assert (text, model) == (ANSWER, "gpt-test-upstream")
    assert upstream_models(fake_upstream) == ["fake-retry-after-60", "gpt-test-upstream"]
    assert recorder.attempts() == [("fake/fake-retry-after-60", 429), ("gpt-test", 200)]
    first, fallback = fake_upstream.requests
    assert fallback.received - first.received < 60  # the fallback did not wait out the Retry-After
    assert recorder.last.target is not None and recorder.last.target.model == "gpt-test"


def test_retry_budget_caps_the_wait(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory(CONFIG + "retry_budget = 2.0\n")
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as info:
        gw.openai().chat.completions.create(model="fake/fake-retry-after-60", messages=MESSAGES)
    # Waiting 60 s would overspend the 2 s budget: the client gets the 429 now, with the provider's Retry-After.
    assert len(fake_upstream.requests) == 1
    assert info.value.response.headers["retry-after"] == "60"
    assert time.monotonic() - started < 60  # not after waiting it out


# -- retries and fallbacks --------------------------------------------------------------------------

@both
def test_500_once_then_success(gw: GatewayServer, fake_upstream: FakeUpstream, recorder: CallRecorder, stream: bool) -> None:
    text, _ = ask(gw, "fake/fake-error-500", stream, retry_params={"retry_enabled": True, "num_retries": 2}, **fail_times(1))
    assert text == ANSWER
    assert len(fake_upstream.requests) == 2
    assert recorder.attempts() == [("fake/fake-error-500", 500), ("fake/fake-error-500", 200)]


def test_500_without_retry_params_is_not_retried(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        gw.openai().chat.completions.create(model="fake/fake-error-500", messages=MESSAGES, extra_body=fail_times(1))
    assert info.value.status_code == 500
    assert "fake upstream error 500" in info.value.message
    assert len(fake_upstream.requests) == 1


def test_retry_enabled_false_turns_retries_off(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    with pytest.raises(openai.RateLimitError):
        gw.openai().chat.completions.create(
            model="fake/fake-retry-after-1", messages=MESSAGES, extra_body={"retry_params": {"retry_enabled": False}}
        )
    assert len(fake_upstream.requests) == 1


@both
def test_503_persistent_then_fallback(gw: GatewayServer, fake_upstream: FakeUpstream, recorder: CallRecorder, stream: bool) -> None:
    text, model = ask(gw, "fake/fake-error-503", stream, fallback_models=["fake/fake-model"],
                      retry_params={"num_retries": 2, "retry_after": 0.05})
    # Retries of the same model come first, then the fallback; the answer says which model answered.
    assert (text, model) == (ANSWER, "fake-model")
    assert upstream_models(fake_upstream) == ["fake-error-503"] * 3 + ["fake-model"]
    assert recorder.attempts() == [("fake/fake-error-503", 503)] * 3 + [("fake/fake-model", 200)]
    assert all(a.provider == "fake" and a.duration > 0 for a in recorder.last.attempts)
    assert recorder.last.attempts[0].error == "fake upstream error 503"
    assert recorder.last.target is not None and recorder.last.target.model == "fake/fake-model"


def test_every_fallback_failing_returns_the_last_upstream_error(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        gw.openai().chat.completions.create(
            model="fake/fake-error-503", messages=MESSAGES, extra_body={"fallback_models": ["fake/fake-error-502"]}
        )
    assert info.value.status_code == 502
    assert info.value.body["message"] == "fake upstream error 502"
    assert upstream_models(fake_upstream) == ["fake-error-503", "fake-error-502"]


@both
def test_connection_reset_before_headers(gw: GatewayServer, fake_upstream: FakeUpstream, recorder: CallRecorder, stream: bool) -> None:
    text, model = ask(gw, "fake/fake-reset", stream, fallback_models=["gpt-test"])
    assert (text, model) == (ANSWER, "gpt-test-upstream")
    assert recorder.attempts() == [("fake/fake-reset", 502), ("gpt-test", 200)]


def test_connection_reset_is_retried_with_retry_params(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    text, _ = ask(gw, "fake/fake-reset", False, retry_params={"num_retries": 1}, **fail_times(1))
    assert text == ANSWER
    assert len(fake_upstream.requests) == 2


@both
def test_no_response_is_cut_at_the_first_byte_timeout_then_fallback(
    gw: GatewayServer, fake_upstream: FakeUpstream, recorder: CallRecorder, stream: bool
) -> None:
    text, model = ask(gw, "fake/fake-hang", stream, fallback_models=["gpt-test"])
    assert (text, model) == (ANSWER, "gpt-test-upstream")
    assert recorder.attempts() == [("fake/fake-hang", 504), ("gpt-test", 200)]
    assert "first_byte_timeout" in (recorder.last.attempts[0].error or "")
    assert recorder.last.attempts[0].duration >= 0.9  # cut at first_byte_timeout = 1.0, not before
    # The hung upstream request was closed, not left open.
    assert fake_upstream.wait_for_disconnect(5)


def test_no_response_without_fallback_is_a_504(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        gw.openai().chat.completions.create(model="fake/fake-hang", messages=MESSAGES)
    assert info.value.status_code == 504
    assert info.value.body["code"] == "upstream_timeout"
    assert time.monotonic() - started >= 0.9  # cut at first_byte_timeout = 1.0, not before


@both
def test_slow_first_token_beyond_the_limit_falls_back(gw: GatewayServer, fake_upstream: FakeUpstream, recorder: CallRecorder,
                                                       stream: bool) -> None:
    text, model = ask(gw, "fake/fake-slow-first-byte-4000", stream, fallback_models=["gpt-test"])
    assert (text, model) == (ANSWER, "gpt-test-upstream")
    # Cut at the first-byte timeout (1 s), not waited for.
    assert recorder.attempts() == [("fake/fake-slow-first-byte-4000", 504), ("gpt-test", 200)]
    assert "first_byte_timeout" in (recorder.last.attempts[0].error or "")


def test_slow_first_token_within_the_limit_is_waited_for(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    text, model = ask(gw, "fake/fake-slow-first-byte-400", True, fallback_models=["gpt-test"])
    assert (text, model) == (ANSWER, "fake-slow-first-byte-400")


def test_request_timeout_replaces_the_first_byte_timeout(gw: GatewayServer, fake_upstream: FakeUpstream, recorder: CallRecorder) -> None:
    # 0.6 s is within the config's 1 s, but not within the request's own 0.3 s.
    text, model = ask(gw, "fake/fake-slow-first-byte-600", True, timeout=0.3, fallback_models=["gpt-test"])
    assert (text, model) == (ANSWER, "gpt-test-upstream")
    assert recorder.attempts() == [("fake/fake-slow-first-byte-600", 504), ("gpt-test", 200)]
    assert "(timeout)" in (recorder.last.attempts[0].error or "")


def test_per_provider_first_byte_timeout(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory(CONFIG + "[reliability.providers.fake]\nfirst_byte_timeout = 3.0\n")
    # 1.5 s is beyond the default of 1 s but within the provider's own 3 s.
    text, model = ask(gw, "fake/fake-slow-first-byte-1500", True, fallback_models=["mock/backup"])
    assert (text, model) == (ANSWER, "fake-slow-first-byte-1500")


def test_total_timeout_bounds_the_whole_request(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory(CONFIG + "total_timeout = 1.5\n")
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        gw.openai().chat.completions.create(
            model="fake/fake-hang", messages=MESSAGES, extra_body={"fallback_models": ["fake/fake-hang,chunks-3", "gpt-test"]}
        )
    # 1 s on the first candidate, the 0.5 s left on the second, and no time for the third.
    assert info.value.status_code == 504
    assert "total_timeout" in info.value.message
    assert time.monotonic() - started >= 1.4
    assert upstream_models(fake_upstream) == ["fake-hang", "fake-hang,chunks-3"]


# -- client errors ------------------------------------------------------------------------------------

def test_400_context_length_is_not_resent(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        gw.openai().chat.completions.create(
            model="fake/fake-error-400", messages=MESSAGES,
            extra_body={"retry_params": {"num_retries": 3}, "fallback_models": ["gpt-test"]},
        )
    assert info.value.body["message"] == "fake upstream error 400"
    # Neither retried nor sent to the fallback: the same payload would fail the same way.
    assert upstream_models(fake_upstream) == ["fake-error-400"]


def test_fallback_on_any_sends_a_400_to_the_fallback(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory(CONFIG + 'fallback_on = "any"\n')
    text, model = ask(gw, "fake/fake-error-400", False, retry_params={"num_retries": 3}, fallback_models=["gpt-test"])
    assert (text, model) == (ANSWER, "gpt-test-upstream")
    assert upstream_models(fake_upstream) == ["fake-error-400", "gpt-test-upstream"]


def test_provider_401_falls_back_without_retry(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    text, model = ask(gw, "fake/fake-error-401", False, retry_params={"num_retries": 3}, fallback_models=["gpt-test"])
    assert model == "gpt-test-upstream"
    assert upstream_models(fake_upstream) == ["fake-error-401", "gpt-test-upstream"]


def test_unknown_fallback_slug_is_a_404_before_any_upstream_call(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        gw.openai().chat.completions.create(model="gpt-test", messages=MESSAGES, extra_body={"fallback_models": ["no-such-model"]})
    assert "no-such-model" in info.value.message
    assert fake_upstream.requests == []


@pytest.mark.parametrize("params", [{"retry_params": {"num_retries": -1}}, {"timeout": 0}], ids=["num_retries", "timeout"])
def test_bad_reliability_params_are_400(gw: GatewayServer, fake_upstream: FakeUpstream, params: dict[str, Any]) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        gw.openai().chat.completions.create(model="gpt-test", messages=MESSAGES, extra_body=params)
    assert info.value.body["param"] in ("retry_params.num_retries", "timeout")
    assert fake_upstream.requests == []


@pytest.mark.parametrize(("section", "error"), [
    ("first_byte_timeout = 0", r"`reliability\.first_byte_timeout`: expected `float` > 0"),
    ("total_timeout = -1", r"`reliability\.total_timeout`: expected `float` > 0"),
    ("jitter = -0.1", r"`reliability\.jitter`: expected `float` >= 0"),
    ("num_retries = -1", r"`reliability\.num_retries`: expected `int` >= 0"),
    ("[reliability.providers.fake]\nidle_timeout = 0", r"`reliability\.providers\.fake\.idle_timeout`: must be greater than 0"),
    ("[reliability.providers.nope]\nidle_timeout = 1", r"`reliability\.providers\.nope`: no provider `nope` is configured"),
], ids=["first_byte", "total", "jitter", "num_retries", "provider_idle", "unknown_provider"])
def test_bad_settings_stop_the_start_naming_the_key(gateway_factory: Callable[..., GatewayServer], section: str, error: str) -> None:
    from respan_gateway import ConfigError

    with pytest.raises(ConfigError, match=error):
        gateway_factory(f"[reliability]\n{section}\n" if not section.startswith("[") else section + "\n")


# -- streams after the first chunk -------------------------------------------------------------------

def stream_until_error(gw: GatewayServer, model: str, **params: Any) -> tuple[str, openai.APIError]:
    text = ""
    stream = gw.openai().chat.completions.create(model=model, messages=MESSAGES, stream=True, extra_body=params)
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
    return text, info.value


def test_stream_cut_after_some_chunks_ends_with_an_error_event(gw: GatewayServer, fake_upstream: FakeUpstream, recorder: CallRecorder) -> None:
    text, error = stream_until_error(gw, "fake/fake-cut-after-3", fallback_models=["gpt-test"])
    # The client saw part of the answer, then an explicit error: never a truncated "success".
    assert text == "Hello from the "
    assert "broke off" in error.message
    # Too late to fail over: the first chunk had gone to the client.
    assert upstream_models(fake_upstream) == ["fake-cut-after-3"]
    attempt = recorder.last.attempts[-1]
    assert attempt.status == 502 and "broke off" in (attempt.error or "")


def test_stream_that_stalls_is_cut_at_the_idle_timeout(gw: GatewayServer, fake_upstream: FakeUpstream, recorder: CallRecorder) -> None:
    started = time.monotonic()
    text, error = stream_until_error(gw, "fake/fake-stall-after-2")
    assert text == "Hello from "
    assert "stalled" in error.message and "idle_timeout" in error.message
    assert time.monotonic() - started >= 0.5
    assert recorder.last.attempts[-1].status == 504
    assert fake_upstream.wait_for_disconnect(5)


def test_total_timeout_ends_a_long_stream_with_an_error_event(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory(CONFIG + "total_timeout = 1.2\n")
    started = time.monotonic()
    # Each gap (0.3 s) is within the idle timeout; the whole stream (3 s) is not within the total.
    text, error = stream_until_error(gw, "fake/fake-slow-chunks-300,chunks-10")
    assert 0 < len(text) < len(ANSWER * 2)
    assert "total_timeout" in error.message
    assert time.monotonic() - started >= 1.1


def test_slow_chunks_within_the_idle_timeout_are_fine(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    text, _ = ask(gw, "fake/fake-slow-chunks-200", True)
    assert text == ANSWER


def test_malformed_chunk_ends_the_stream_with_an_error_event(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    text, error = stream_until_error(gw, "fake/fake-malformed-after-2")
    assert text == "Hello from "
    assert "malformed" in error.message


def test_midstream_error_event_is_passed_on(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    text, error = stream_until_error(gw, "fake/fake-midstream-error")
    assert text == "Hello from "
    assert "mid-stream" in error.message


def test_stream_without_done_but_finished_is_clean(gw: GatewayServer, fake_upstream: FakeUpstream) -> None:
    response = httpx2.post(
        gw.base_url + "chat/completions",
        headers={"authorization": f"Bearer {TEST_KEY}"},
        json={"model": "fake/fake-no-done", "messages": MESSAGES, "stream": True},
        timeout=10,
    )
    body = response.text
    assert response.status_code == 200
    assert body.endswith("data: [DONE]\n\n")
    assert '"error"' not in body
    text, _ = ask(gw, "fake/fake-no-done", True)
    assert text == ANSWER


# -- removability ------------------------------------------------------------------------------------

def test_without_routing_retries_still_work(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory(CONFIG + '[plugins]\ndisabled = ["routing"]\n')
    text, _ = ask(gw, "fake/fake-error-503", False, retry_params={"num_retries": 1, "retry_after": 0.05}, **fail_times(1))
    assert text == ANSWER
    assert len(fake_upstream.requests) == 2
    assert "routing" not in [name for name, _ in gw.gateway.middlewares]


def test_without_reliability_nothing_is_retried(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory('[plugins]\ndisabled = ["reliability"]\n')
    with pytest.raises(openai.InternalServerError):
        gw.openai().chat.completions.create(
            model="fake/fake-error-503", messages=MESSAGES,
            extra_body={"retry_params": {"num_retries": 2}, "fallback_models": ["gpt-test"]},
        )
    assert upstream_models(fake_upstream) == ["fake-error-503"]
