"""Customer budgets, rate limits and key limits, driven through the real SDKs on the embedded default
(in-process counters) and on Redis; time is moved with the plugin's clock, never slept."""

from __future__ import annotations

import time
from collections.abc import Callable

import anthropic
import httpx2
import openai
import pytest

from respan_gateway import KeyLimits, Principal, hookimpl
from respan_gateway.testing import TEST_KEY, FakeUpstream, GatewayServer

HI = [{"role": "user", "content": "hi"}]
AUTH = {"authorization": f"Bearer {TEST_KEY}"}
# gpt-test costs $1 / $2 per 1M input / output tokens. "hi" with max_tokens=10 is estimated at 7 prompt
# tokens + 10 = $0.000027; the fake answers 1 prompt and 5 completion tokens = $0.000011.
ESTIMATE = 27e-6
REAL = 11e-6


def limits_of(server: GatewayServer):  # noqa: ANN201 - the plugin's middleware, for its clock
    return dict(server.gateway.middlewares)["limits"]


def settled(gw: GatewayServer, before: int) -> None:
    """Wait until the observer has seen the call made since ``before`` and its settlement is done (on
    Redis it is one more round trip after the client got the answer)."""
    limits = limits_of(gw)
    deadline = time.monotonic() + 5
    while limits.observed <= before and time.monotonic() < deadline:
        time.sleep(0.01)
    gw.call(limits.drain())


def ask(gw: GatewayServer, customer: dict | None = None, *, key: str = TEST_KEY, **kw):  # noqa: ANN201
    """One chat call (max_tokens=10), returned raw (headers); waits until it is settled."""
    extra = {"customer_params": customer} if customer else {}
    kw.setdefault("max_tokens", 10)
    before = limits_of(gw).observed
    try:
        return gw.openai(api_key=key).chat.completions.with_raw_response.create(
            model="gpt-test", messages=HI, extra_body={**extra, **kw.pop("extra_body", {})}, **kw)
    finally:
        settled(gw, before)


def blocked(gw: GatewayServer, customer: dict | None = None, **kw) -> openai.RateLimitError:
    with pytest.raises(openai.RateLimitError) as caught:
        ask(gw, customer, **kw)
    return caught.value


@pytest.fixture(params=["memory", "redis"])
def state(request: pytest.FixtureRequest) -> str:
    """The embedded default (no Redis) and the shared Redis enforce the same limits."""
    return request.getfixturevalue("redis_state") if request.param == "redis" else ""


def test_a_period_budget_blocks_with_429_and_limit_info_and_the_next_period_opens_it(gateway_factory, state) -> None:
    gw = gateway_factory(state)
    customer = {"customer_identifier": "cust-budget", "period_budget": 0.00005, "budget_duration": "daily"}
    first = ask(gw, customer)
    record = gw.record(first.headers["x-respan-log-id"])
    assert record["limit_info"] == {"is_allowed": True, "limits": [
        {"name": "customer_budget", "current_value": 0.0, "new_value": ESTIMATE, "limit_value": 0.00005, "is_within_limit": True}]}
    # Each call settles at its real cost; the check counts its estimate: 3 fit, the 4th does not.
    for _ in range(5):
        try:
            ask(gw, customer)
        except openai.RateLimitError as exc:
            error = exc
            break
    else:
        pytest.fail("the budget never blocked")
    assert error.status_code == 429
    body = error.body
    assert body["code"] == "budget_exceeded" and body["type"] == "rate_limit_error"
    assert "cust-budget" in body["message"] and "budget" in body["message"]
    assert 0 < body["retry_after"] <= 86400
    assert int(error.response.headers["retry-after"]) == max(1, round(body["retry_after"]))
    record = gw.record(error.response.headers["x-respan-log-id"])
    assert record["status_code"] == 429
    info = record["limit_info"]
    assert info["is_allowed"] is False
    (limit,) = info["limits"]
    assert limit["name"] == "customer_budget" and limit["is_within_limit"] is False
    assert limit["new_value"] > limit["limit_value"] == 0.00005
    assert limit["current_value"] <= 0.00005
    # No upstream call was made for the blocked request; the next day the budget is open again.
    limits_of(gw).clock.offset += 86400
    assert ask(gw, customer).http_response.status_code == 200


def test_a_total_budget_is_lifetime_and_is_checked_on_every_endpoint(gateway_factory, state, fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory(state + f"""
[providers.claude]
type = "anthropic"
base_url = "{fake_upstream.url}"
api_key = "sk-ant-test"

[models."claude-test"]
provider = "claude"
input_cost = 1.0
output_cost = 2.0

[models."embed-test"]
provider = "fake"
mode = "embedding"
input_cost = 1.0
""")
    params = {"customer_identifier": "cust-total", "total_budget": 0.000001}
    client = gw.openai()
    # Each request alone is estimated over the budget: every endpoint refuses it before the upstream.
    seen = len(fake_upstream.requests)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-test", messages=HI, max_tokens=10, extra_body={"customer_params": params})
    with pytest.raises(openai.RateLimitError) as caught:
        client.embeddings.create(model="embed-test", input="a long text to embed " * 20, extra_body={"customer_params": params})
    assert caught.value.body["code"] == "budget_exceeded" and "retry_after" not in caught.value.body  # lifetime: no retry
    native = anthropic.Anthropic(base_url=gw.url + "/api/anthropic", api_key=TEST_KEY, max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as refused:
        native.messages.create(model="claude-test", max_tokens=100, messages=HI,
                               metadata={"respan_params": {"customer_params": params}})
    assert refused.value.body["error"]["type"] == "rate_limit_error"
    # The Responses API (whoever serves it) is checked from the generic call fields the same way.
    r = httpx2.post(gw.base_url + "responses", headers=AUTH, timeout=10,
                    json={"model": "gpt-test", "input": "hi", "max_output_tokens": 10, "customer_params": params})
    assert r.status_code in (404, 429)
    assert len(fake_upstream.requests) == seen
    # A budget that fits: embeddings settle at their real cost (no completion tokens are reserved).
    roomy = {"customer_identifier": "cust-embed", "total_budget": 1.0}
    client.embeddings.create(model="embed-test", input="one two three", extra_body={"customer_params": roomy})
    user = _settled_user(gw, "cust-embed", requests=1)
    assert user["total_usage"] == pytest.approx(3e-6)


def test_markup_counts_on_the_customers_usage_not_on_the_records_cost(gateway_factory, state) -> None:
    gw = gateway_factory(state)
    client = gw.openai()
    customer = {"customer_identifier": "cust-markup", "markup_percentage": 50, "total_budget": 1.0}
    log_id = ask(gw, customer).headers["x-respan-log-id"]
    record = gw.record(log_id)
    assert record["cost"] == pytest.approx(REAL)
    assert record["limit_info"]["limits"][0]["new_value"] == pytest.approx(ESTIMATE * 1.5)
    user = httpx2.get(gw.base_url + "users/cust-markup/", headers=AUTH).json()
    assert user["total_usage"] == pytest.approx(REAL * 1.5)
    assert user["total_cost"] == pytest.approx(REAL)
    assert user["markup_percentage"] == 50


def test_a_customer_rate_limit_counts_requests_per_minute(gateway_factory, state) -> None:
    gw = gateway_factory(state)
    client = gw.openai()
    customer = {"customer_identifier": "cust-rpm", "rate_limit": 2}
    limits = limits_of(gw)
    # Start the test at the beginning of a minute, so that three calls fall in one window.
    now = limits.clock.now()
    limits.clock.offset += 60 - now % 60 + 1
    ask(gw, customer)
    ask(gw, customer)
    error = blocked(gw, customer)
    assert error.body["code"] == "rate_limit_exceeded"
    assert "2 requests per minute" in error.body["message"]
    assert 0 < error.body["retry_after"] <= 60
    # Another customer is not limited by it; the next minute opens it again.
    ask(gw, {"customer_identifier": "cust-other", "rate_limit": 2})
    limits.clock.offset += 60
    ask(gw, customer)


def test_customer_params_apply_from_the_header_channel_and_persist_for_later_calls(gateway_factory) -> None:
    import base64
    import json

    gw = gateway_factory()
    client = gw.openai()
    header = base64.b64encode(json.dumps({"customer_params": {"customer_identifier": "cust-hdr", "rate_limit": 1}}).encode())
    limits = limits_of(gw)
    limits.clock.offset += 60 - limits.clock.now() % 60 + 1
    client.chat.completions.create(model="gpt-test", messages=HI, extra_headers={"X-Data-Respan-Params": header.decode()})
    # A later call names the customer only: its stored rate limit applies.
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-test", messages=HI, extra_body={"customer_identifier": "cust-hdr"})


# -- key limits -----------------------------------------------------------------------------------------

LIMITED_KEY = "sk-respan-limited-key"


class KeyLimitsPlugin:
    """Until keys carry limits in the config or the keys API: a test auth whose second key has limits."""

    __name__ = "key_limits_plugin"

    def __init__(self, limits: KeyLimits) -> None:
        self.limits = limits

    @hookimpl
    def register_middlewares(self, register):  # noqa: ANN001
        limits = self.limits

        def factory(settings, gateway):  # noqa: ANN001
            async def auth(call, call_next):  # noqa: ANN001
                if call.headers.get("authorization") == f"Bearer {LIMITED_KEY}":
                    call.principal = Principal(tenant="acme", key_id="limited", limits=limits)
                return await call_next(call)

            return auth

        register("test_key_limits", factory, order=110)


@pytest.fixture
def key_gateway(gateway_factory, state) -> Callable[[KeyLimits], GatewayServer]:
    def start(limits: KeyLimits) -> GatewayServer:
        return gateway_factory(state, plugins=(KeyLimitsPlugin(limits),),
                               keys=f'{{ key = "{LIMITED_KEY}", tenant = "acme", name = "limited" }}')

    return start


@pytest.mark.parametrize("field, window", [("requests_per_minute", 60), ("requests_per_hour", 3600),
                                           ("requests_per_day", 86400), ("requests_per_month", 31 * 86400)])
def test_key_request_limits(key_gateway, field: str, window: int) -> None:
    gw = key_gateway(KeyLimits(**{field: 2}))
    clock = limits_of(gw).clock
    clock.offset += 60 - clock.now() % 60 + 1  # not at the end of a minute (or hour, day, month)
    ask(gw, key=LIMITED_KEY)
    ask(gw, key=LIMITED_KEY)
    error = blocked(gw, key=LIMITED_KEY)
    assert error.body["code"] == "rate_limit_exceeded" and "API key `limited`" in error.body["message"]
    assert 0 < error.body["retry_after"] <= window
    ask(gw)  # the other key has no limits
    clock.offset += window
    ask(gw, key=LIMITED_KEY)


@pytest.mark.parametrize("field, window", [("spend_per_hour", 3600), ("spend_per_day", 86400),
                                           ("spend_per_month", 31 * 86400), ("max_spend", None)])
def test_key_spend_limits(key_gateway, field: str, window: int | None) -> None:
    gw = key_gateway(KeyLimits(**{field: 0.00003}))  # one call's estimate fits, two do not
    ask(gw, key=LIMITED_KEY)
    error = blocked(gw, key=LIMITED_KEY, max_tokens=20)
    assert error.body["code"] == "budget_exceeded"
    if window is None:
        assert "retry_after" not in error.body
        return
    assert 0 < error.body["retry_after"] <= window
    limits_of(gw).clock.offset += window
    ask(gw, key=LIMITED_KEY)


@pytest.mark.parametrize("field, window", [("tokens_per_hour", 3600), ("tokens_per_day", 86400),
                                           ("tokens_per_month", 31 * 86400)])
def test_key_token_limits(key_gateway, field: str, window: int) -> None:
    # 17 tokens reserved per call (7 prompt + 10), 6 settled (1 + 5): 30 tokens allow 3 calls, not 4.
    gw = key_gateway(KeyLimits(**{field: 30}))
    log_id = ask(gw, key=LIMITED_KEY).headers["x-respan-log-id"]
    assert gw.record(log_id)["limit_info"]["limits"][0] == {
        "name": f"key_{field}", "current_value": 0.0, "new_value": 17.0, "limit_value": 30.0, "is_within_limit": True}
    ask(gw, key=LIMITED_KEY)
    ask(gw, key=LIMITED_KEY)
    error = blocked(gw, key=LIMITED_KEY)
    assert "tokens per" in error.body["message"]
    limits_of(gw).clock.offset += window
    ask(gw, key=LIMITED_KEY)


def test_a_key_lifetime_spend_survives_a_restart(key_gateway, gateway_factory, tmp_path) -> None:
    database = f'\n[database]\nurl = "sqlite:///{tmp_path}/limits.sqlite3"\n'
    first = gateway_factory(database, plugins=(KeyLimitsPlugin(KeyLimits(max_spend=0.00004)),),
                            keys=f'{{ key = "{LIMITED_KEY}", tenant = "acme", name = "limited" }}')
    ask(first, key=LIMITED_KEY)  # settles 0.000011
    ask(first, key=LIMITED_KEY)  # 0.000022 settled; a third call (0.000022 + 0.000027) would not fit
    first.stop()  # a graceful stop writes the usage totals
    second = gateway_factory(database, plugins=(KeyLimitsPlugin(KeyLimits(max_spend=0.00004)),),
                             keys=f'{{ key = "{LIMITED_KEY}", tenant = "acme", name = "limited" }}')
    error = blocked(second, key=LIMITED_KEY)
    assert error.body["code"] == "budget_exceeded"


def test_an_expired_key_is_refused(gateway_factory) -> None:
    gw = gateway_factory(keys='{ key = "sk-respan-old-key", tenant = "acme", name = "old", expires_at = "2020-01-01" }')
    with pytest.raises(openai.AuthenticationError):
        gw.openai(api_key="sk-respan-old-key").chat.completions.create(model="gpt-test", messages=HI)


def test_several_limits_are_checked_together_and_a_refused_call_reserves_nothing(key_gateway) -> None:
    gw = key_gateway(KeyLimits(requests_per_minute=100, tokens_per_hour=30))
    ask(gw, key=LIMITED_KEY)  # 17 tokens reserved, 6 settled
    error = blocked(gw, key=LIMITED_KEY, max_tokens=100)  # 107 tokens do not fit: the request counter is not taken either
    record = gw.record(error.response.headers["x-respan-log-id"])
    by_name = {limit["name"]: limit for limit in record["limit_info"]["limits"]}
    assert by_name["key_requests_per_minute"]["is_within_limit"] is True
    assert by_name["key_tokens_per_hour"]["is_within_limit"] is False
    log_id = ask(gw, key=LIMITED_KEY).headers["x-respan-log-id"]
    by_name = {limit["name"]: limit for limit in gw.record(log_id)["limit_info"]["limits"]}
    assert by_name["key_requests_per_minute"]["current_value"] == 1.0  # the refused call took nothing


# -- what a call costs ------------------------------------------------------------------------------------

def test_streams_settle_from_their_usage_and_cut_streams_from_an_estimate(gateway_factory, state) -> None:
    gw = gateway_factory(state)
    client = gw.openai()
    customer = {"customer_identifier": "cust-stream", "total_budget": 1.0}
    stream = client.chat.completions.create(model="gpt-test", messages=HI, max_tokens=10, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"customer_params": customer})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    with pytest.raises(openai.APIError):
        cut = client.chat.completions.create(model="gpt-test", messages=HI, max_tokens=10, stream=True,
                                             extra_body={"customer_params": customer,
                                                         "extra_headers": {"x-fake-scenario": "cut-after-2"}})
        for _ in cut:
            pass
    user = _settled_user(gw, "cust-stream", requests=2)
    # The complete stream: its usage (1 + 5 tokens); the cut one: 7 prompt tokens (estimated) + its 2 pieces' tokens.
    assert user["total_prompt_tokens"] >= 1 + 1 and user["total_completion_tokens"] >= 5 + 1
    assert user["total_usage"] == pytest.approx(user["total_cost"]) and user["total_usage"] > REAL


def _settled_user(gw: GatewayServer, identifier: str, *, requests: int) -> dict:
    import time

    deadline = time.monotonic() + 5
    while True:  # the last call settles once its stream has ended, just after the client saw the end
        user = httpx2.get(gw.base_url + f"users/{identifier}/", headers=AUTH).json()
        if user.get("total_requests") == requests or time.monotonic() > deadline:
            assert user["total_requests"] == requests, user
            return user
        time.sleep(0.05)


def test_a_failed_call_releases_its_reservation(gateway_factory, state) -> None:
    gw = gateway_factory(state)
    client = gw.openai()
    customer = {"customer_identifier": "cust-fail", "period_budget": 0.00003, "budget_duration": "monthly"}
    for _ in range(3):  # each would be refused if the failed ones kept their estimate
        with pytest.raises(openai.InternalServerError):
            ask(gw, customer, extra_body={"extra_headers": {"x-fake-scenario": "error-500"}})
    _settled_user(gw, "cust-fail", requests=3)
    ask(gw, customer)


def test_a_cache_hit_costs_nothing_and_counts_one_request(gateway_factory) -> None:
    from respan_gateway import CacheInfo, JSONResult

    class FakeCache:
        """A stage that answers from "its cache", as the cache plugin marks a hit on the outcome."""

        __name__ = "fake_cache_plugin"

        @staticmethod
        @hookimpl
        def register_middlewares(register):  # noqa: ANN001
            def factory(settings, gateway):  # noqa: ANN001
                async def cache(call, call_next):  # noqa: ANN001
                    if call.headers.get("x-test-hit"):
                        call.outcome.cache = CacheInfo(key="k", hit=True)
                        return JSONResult(200, data={"id": "cached", "object": "chat.completion", "created": 0, "model": "gpt-test",
                                                     "choices": [{"index": 0, "finish_reason": "stop",
                                                                  "message": {"role": "assistant", "content": "cached"}}],
                                                     "usage": {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6}})
                    return await call_next(call)

                return cache

            register("fake_cache", factory, order=600)

    gw = gateway_factory(plugins=(FakeCache,))
    client = gw.openai()
    customer = {"customer_identifier": "cust-cache", "total_budget": 1.0, "rate_limit": 100}
    ask(gw, customer)
    ask(gw, customer, extra_headers={"x-test-hit": "1"})
    user = _settled_user(gw, "cust-cache", requests=2)
    assert user["total_usage"] == pytest.approx(REAL)  # the hit added nothing
    log_id = ask(gw, customer).headers["x-respan-log-id"]
    rate = {limit["name"]: limit for limit in gw.record(log_id)["limit_info"]["limits"]}["customer_rate_limit"]
    assert rate["current_value"] == 2.0  # the hit counted one request


# -- warnings ---------------------------------------------------------------------------------------------

def test_crossing_a_warning_threshold_logs_an_event_counts_a_metric_and_calls_the_webhook(
        gateway_factory, fake_upstream: FakeUpstream) -> None:
    from structlog.testing import capture_logs

    gw = gateway_factory(f"""
[limits]
warning_threshold = 0.9
warning_thresholds = {{ customer_rate_limit = 0.5 }}
warning_webhook_url = "{fake_upstream.url}/hooks/limits?token=hook-secret-123"
""")
    limits = limits_of(gw)
    limits.clock.offset += 60 - limits.clock.now() % 60 + 1
    customer = {"customer_identifier": "cust-warn", "rate_limit": 4}
    with capture_logs() as events:
        ask(gw, customer)  # 1 of 4: under half
        ask(gw, customer)  # 2 of 4: crosses half
        ask(gw, customer)  # 3 of 4: already past it, no second warning
    warnings = [e for e in events if e["event"] == "limit_warning"]
    assert len(warnings) == 1
    assert warnings[0]["limit"] == "customer_rate_limit" and warnings[0]["subject"] == "cust-warn"
    assert warnings[0]["current_value"] == 2.0 and warnings[0]["limit_value"] == 4.0 and warnings[0]["threshold"] == 0.5
    metrics = httpx2.get(gw.url + "/metrics").text
    assert 'respan_gateway_limit_warnings_total{limit="customer_rate_limit"} 1' in metrics
    deadline = time.monotonic() + 5
    while not (hooks := [r for r in fake_upstream.requests if r.path == "/hooks/limits"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    (hook,) = hooks
    assert hook.method == "POST" and hook.json["event"] == "limit_warning" and hook.json["limit"] == "customer_rate_limit"
    # The webhook's URL (a credential, as Slack's) never reaches the process log.
    assert not any("hook-secret-123" in str(e) for e in events)


def test_warnings_are_off_at_threshold_one(gateway_factory, fake_upstream: FakeUpstream) -> None:
    from structlog.testing import capture_logs

    gw = gateway_factory("[limits]\nwarning_threshold = 1.0\n")
    with capture_logs() as events:
        ask(gw, {"customer_identifier": "cust-quiet", "total_budget": 0.00003})
    assert not [e for e in events if e["event"] == "limit_warning"]
