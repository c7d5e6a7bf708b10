"""Routing through the real openai SDK (and raw HTTP where the SDK insists on `model`), over real sockets.

What reached the fake upstream says which model and which deployment (key, endpoint) were chosen.
"""

from __future__ import annotations

import socket
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import openai
import pytest

from respan_gateway.testing import TEST_KEY, CallRecorder, FakeUpstream, GatewayServer
from respan_plugins.routing import deployments

MESSAGES = [{"role": "user", "content": "Say hello"}]
ANSWER = "Hello from the fake upstream!"

LB_CONFIG = """
[routing.load_balance_groups.main]
models = [{ model = "fake/lb-heavy", weight = 3 }, { model = "fake/lb-light", weight = 1 }]
"""


def upstream_models(fake: FakeUpstream) -> list[str]:
    return [r.json["model"] for r in fake.requests]


def chat(gw: GatewayServer, body: dict[str, Any]) -> httpx2.Response:
    """Raw HTTP, for bodies an SDK cannot send (no `model`)."""
    return httpx2.post(
        gw.base_url + "chat/completions", headers={"authorization": f"Bearer {TEST_KEY}"},
        json={"messages": MESSAGES, **body}, timeout=20,
    )


def ask(gw: GatewayServer, model: str = "gpt-test", **params: Any) -> Any:
    return gw.openai().chat.completions.create(model=model, messages=MESSAGES, extra_body=params)


# -- model, models, fallbacks --------------------------------------------------------------------------

def test_models_without_model_first_is_primary_rest_are_fallbacks(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory()
    response = chat(gw, {"models": ["fake/fake-error-503", "fake/second", "fake/third"]})
    assert response.status_code == 200
    assert response.json()["model"] == "second"
    assert upstream_models(fake_upstream) == ["fake-error-503", "second"]


def test_models_with_model_are_extra_fallbacks_after_fallback_models(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory()
    completion = ask(gw, "fake/fake-error-503", models=["fake/fake-error-502", "fake/extra"], fallback_models=["fake/fake-error-500"])
    assert completion.model == "extra"
    assert upstream_models(fake_upstream) == ["fake-error-503", "fake-error-500", "fake-error-502", "extra"]


def test_config_default_fallbacks_and_the_request_list_replacing_them(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory('[routing]\nfallback_models = ["fake/default-fallback"]\n')
    assert ask(gw, "fake/fake-error-503").model == "default-fallback"
    assert ask(gw, "fake/fake-error-503", fallback_models=["fake/own-fallback"]).model == "own-fallback"
    assert upstream_models(fake_upstream) == ["fake-error-503", "default-fallback", "fake-error-503", "own-fallback"]


def test_disable_fallback(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory('[routing]\nfallback_models = ["fake/default-fallback"]\n')
    with pytest.raises(openai.InternalServerError):
        ask(gw, "fake/fake-error-503", disable_fallback=True, fallback_models=["gpt-test"], models=["fake/x"])
    assert upstream_models(fake_upstream) == ["fake-error-503"]


def test_unknown_slug_anywhere_is_a_404_before_any_upstream_call(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory()
    for params in ({"models": ["gpt-test", "nope-1"]}, {"load_balance_group": {"group_id": "g", "models": [{"model": "nope-2"}]}}):
        with pytest.raises(openai.NotFoundError) as info:
            ask(gw, **params)
        assert "is not available in the model list" in info.value.message
    with pytest.raises(openai.NotFoundError):
        ask(gw, "nope-3")
    assert fake_upstream.requests == []


def test_route_provider_header_pins_the_provider(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory()
    completion = gw.openai().chat.completions.create(
        model="gpt-test", messages=MESSAGES, extra_headers={"X-Respan-Route-Provider": "MOCK"},
    )
    assert completion.model == "gpt-test-upstream"
    assert completion.id.startswith("chatcmpl-mock-")
    assert fake_upstream.requests == []


# -- exclusions -------------------------------------------------------------------------------------

def test_exclude_models_removes_routing_candidates(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory()
    response = chat(gw, {"models": ["fake/one", "fake/two", "fake/three"], "exclude_models": ["fake/one", "two"]})
    assert response.json()["model"] == "three"
    assert upstream_models(fake_upstream) == ["three"]


def test_exclude_providers_removes_routing_candidates(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory()
    completion = ask(gw, load_balance_group={"group_id": "inline", "models": [{"model": "mock/m1", "weight": 100}, {"model": "fake/only"}]},
                     exclude_providers=["Mock"])
    assert completion.model == "only"
    assert upstream_models(fake_upstream) == ["only"]


def test_explicit_fallbacks_are_not_excluded(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory()
    completion = ask(gw, "fake/fake-error-503", fallback_models=["fake/kept"], models=["fake/dropped"],
                     exclude_models=["fake/kept", "fake/dropped"], exclude_providers=["fake"])
    # `model` and `fallback_models` are the client's explicit choices; `models` are the router's.
    assert completion.model == "kept"
    assert upstream_models(fake_upstream) == ["fake-error-503", "kept"]


def test_everything_excluded_is_a_400(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory()
    response = chat(gw, {"models": ["fake/a", "mock/b"], "exclude_providers": ["fake", "mock"]})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "exclude_models"
    assert fake_upstream.requests == []


# -- load balancing ----------------------------------------------------------------------------------

def test_load_balance_group_weights_within_statistical_bounds(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory(LB_CONFIG)
    client = gw.openai()
    n = 200
    for _ in range(n):
        client.chat.completions.create(model="ignored-by-the-group", messages=MESSAGES, extra_body={"load_balance_group": {"group_id": "main"}})
    counts = Counter(upstream_models(fake_upstream))
    # Weight 3 of 4: expected 150, standard deviation about 6; the bounds are 4 deviations wide.
    assert set(counts) == {"lb-heavy", "lb-light"}
    assert 125 <= counts["lb-heavy"] <= 175, counts


def test_inline_group_models_replace_the_configured_ones(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory(LB_CONFIG)
    completion = ask(gw, load_balance_group={"group_id": "main", "models": [{"model": "fake/inline", "weight": 1}]})
    assert completion.model == "inline"


def test_load_balance_falls_over_to_the_other_members(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory()
    members = [{"model": "fake/fake-error-503", "weight": 1000}, {"model": "fake/healthy", "weight": 1}]
    for _ in range(5):
        assert ask(gw, load_balance_group={"group_id": "g", "models": members}).model == "healthy"


@pytest.mark.parametrize("param", ["loadbalance_models", "load_balance_models"])
def test_deprecated_inline_load_balancing(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream, param: str) -> None:
    gw = gateway_factory()
    completion = ask(gw, "gpt-test", **{param: [{"model": "fake/a", "weight": 1}, {"model": "fake/b", "weight": 1}]})
    assert completion.model in ("a", "b")
    assert upstream_models(fake_upstream) == [completion.model]


def test_unknown_group_and_bad_weights(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory(LB_CONFIG)
    with pytest.raises(openai.NotFoundError) as info:
        ask(gw, load_balance_group={"group_id": "nope"})
    assert "load balance group `nope`" in info.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        ask(gw, load_balance_models=[{"model": "fake/a", "weight": 0}])
    assert bad.value.body["param"] == "load_balance_models"
    assert fake_upstream.requests == []


def test_config_errors_name_the_key(gateway_factory: Callable[..., GatewayServer]) -> None:
    from respan_gateway import ConfigError

    with pytest.raises(ConfigError, match=r"routing\.load_balance_groups\.g\.models\[0\]\.model.*`nope`"):
        gateway_factory('[routing.load_balance_groups.g]\nmodels = [{ model = "nope" }]\n')
    with pytest.raises(ConfigError, match=r"routing\.fallback_models\[0\]"):
        gateway_factory('[routing]\nfallback_models = ["nope"]\n')


@pytest.mark.parametrize(("toml", "error"), [
    ('[routing.load_balance_groups.g]\nmodels = [{ model = "gpt-test", weight = 0 }]',
     r"`routing\.load_balance_groups\.g\.models\[0\]\.weight`: must be greater than 0"),
    ("[routing.load_balance_groups.g]\nmodels = []", r"`routing\.load_balance_groups\.g\.models`: the group is empty"),
    ("[deployments]\nallowed_fails = 0", r"`deployments\.allowed_fails`: expected `int` >= 1"),
    ("[deployments]\ncooldown_seconds = -1", r"`deployments\.cooldown_seconds`: expected `float` >= 0"),
    # The cooldown settings are the deployments middleware's: routing's section no longer has them.
    ("[routing]\nallowed_fails = 3", r"`routing\.allowed_fails`: unknown key"),
], ids=["weight", "empty_group", "allowed_fails", "cooldown_seconds", "moved_key"])
def test_bad_settings_stop_the_start_naming_the_key(gateway_factory: Callable[..., GatewayServer], toml: str, error: str) -> None:
    from respan_gateway import ConfigError

    with pytest.raises(ConfigError, match=error):
        gateway_factory(toml + "\n")


# -- deployments and cooldown -------------------------------------------------------------------------

KEYS_CONFIG = """
[providers.multi]
type = "openai_compatible"
base_url = "{url}/v1"
keys = [{{ api_key = "sk-heavy-key", weight = 3 }}, {{ api_key = "sk-light-key", weight = 1, name = "light" }}]
"""


def test_weighted_keys_of_a_provider(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    recorder = CallRecorder()
    gw = gateway_factory(KEYS_CONFIG.format(url=fake_upstream.url), plugins=(recorder,))
    client = gw.openai()
    for _ in range(160):
        client.chat.completions.create(model="multi/any", messages=MESSAGES)
    keys = Counter(r.headers["authorization"] for r in fake_upstream.requests)
    assert 95 <= keys["Bearer sk-heavy-key"] <= 145, keys
    assert keys["Bearer sk-heavy-key"] + keys["Bearer sk-light-key"] == 160
    assert {c.attempts[0].deployment for c in recorder.calls} == {"multi-1", "light"}


class Clock:
    """The cooldowns' clock, moved by the test: a cooldown ends when the test says so, not when a busy
    machine happens to be slow (both of the ``time`` functions the deployments read)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Replace the deployments' clock (before the gateway is built)."""
    fake = Clock()
    monkeypatch.setattr(deployments, "time", fake)
    return fake


@pytest.fixture
def dead_url() -> Iterator[str]:
    """A loopback URL where nothing listens: connections are refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    yield f"http://127.0.0.1:{port}"


def test_failing_endpoint_is_cooled_down_and_comes_back(
    gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream, dead_url: str, clock: Clock
) -> None:
    recorder = CallRecorder()
    gw = gateway_factory(f"""
[providers.replicas]
type = "openai_compatible"
base_url = "{fake_upstream.url}/v1"
keys = [{{ name = "up", base_url = "{fake_upstream.url}/v1" }}, {{ name = "down", base_url = "{dead_url}/v1" }}]

[deployments]
allowed_fails = 1
cooldown_seconds = 1.0
""", plugins=(recorder,))
    client = gw.openai()
    params = {"retry_params": {"num_retries": 2, "retry_after": 0.01}}

    def round_of(n: int) -> list[str | None]:
        recorder.calls.clear()
        for _ in range(n):
            assert client.chat.completions.create(model="replicas/m", messages=MESSAGES, extra_body=params).model == "m"
        return [a.deployment for c in recorder.calls for a in c.attempts if a.status != 200]

    # Every answer succeeds (a failure on "down" is retried on "up"); "down" is tried at most once,
    # then skipped for the cooldown.
    failed = round_of(20)
    assert failed in ([], ["down"])
    while not failed:  # until "down" was picked once (each pick is a coin flip)
        failed = round_of(5)
    assert round_of(10) == []
    clock.advance(1.1)
    # Back after the cooldown: tried again (still down), and cooled again at its first failure.
    tried = []
    for _ in range(12):
        tried += round_of(1)
    assert tried == ["down"]


def test_primary_down_for_a_while_then_recovers(
    gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream, clock: Clock
) -> None:
    # Provider `flaky` answers 503 to its first 3 requests, then recovers (headers sent on each request).
    gw = gateway_factory(f"""
[providers.flaky]
type = "openai_compatible"
base_url = "{fake_upstream.url}/v1"
headers = {{ x-fake-scenario = "error-503", x-fake-fail-times = "3", x-fake-fail-key = "{uuid.uuid4().hex}" }}

[models.primary]
provider = "flaky"
upstream_model = "primary-upstream"

[deployments]
allowed_fails = 2
cooldown_seconds = 1.0
""")

    def answered_by() -> str:
        return ask(gw, "primary", fallback_models=["gpt-test"]).model

    def primary_requests() -> int:
        return upstream_models(fake_upstream).count("primary-upstream")

    # Two failures on the primary (each falls back), then it is cooled down: traffic skips it.
    assert [answered_by(), answered_by()] == ["gpt-test-upstream"] * 2
    assert primary_requests() == 2
    assert [answered_by() for _ in range(3)] == ["gpt-test-upstream"] * 3
    assert primary_requests() == 2
    clock.advance(1.1)
    # After the cooldown it is tried again: still down (its 3rd failure) and cooled down again at once.
    assert [answered_by(), answered_by()] == ["gpt-test-upstream"] * 2
    assert primary_requests() == 3
    clock.advance(1.1)
    # Recovered: traffic goes back to it.
    assert [answered_by() for _ in range(3)] == ["primary-upstream"] * 3
    assert primary_requests() == 6


def test_each_gateway_keeps_its_own_cooldowns(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    config = "[deployments]\nallowed_fails = 1\ncooldown_seconds = 30\n"
    first, second = gateway_factory(config), gateway_factory(config)

    def answered_by(gw: GatewayServer) -> list[str]:
        fake_upstream.reset()
        assert ask(gw, "fake/fake-error-503", fallback_models=["gpt-test"]).model == "gpt-test-upstream"
        return upstream_models(fake_upstream)

    assert answered_by(first) == ["fake-error-503", "gpt-test-upstream"]
    # Cooled down in the first gateway only: the second (same process) still tries it first.
    assert answered_by(first) == ["gpt-test-upstream"]
    assert answered_by(second) == ["fake-error-503", "gpt-test-upstream"]


def test_without_reliability_routing_still_chooses(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory(LB_CONFIG + '[plugins]\ndisabled = ["reliability"]\n')
    assert ask(gw, "ignored", load_balance_group={"group_id": "main"}).model in ("lb-heavy", "lb-light")
    with pytest.raises(openai.InternalServerError):
        ask(gw, "fake/fake-error-503", fallback_models=["gpt-test"])
    assert len(fake_upstream.requests) == 2


def test_request_credentials_win_and_do_not_count_against_a_deployment(
    gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream
) -> None:
    gw = gateway_factory(KEYS_CONFIG.format(url=fake_upstream.url) + "[deployments]\nallowed_fails = 1\n")
    model = "multi/fake-error-401"
    # The customer's own key is used (the credentials plugin runs after deployments), and its 401
    # says nothing about the configured keys.
    with pytest.raises(openai.AuthenticationError):
        ask(gw, model, customer_credentials={"multi": {"api_key": "sk-customer-key"}})
    assert fake_upstream.requests[-1].headers["authorization"] == "Bearer sk-customer-key"
    fake_upstream.reset()
    # So the configured deployment is still tried first; its own 401 (allowed_fails = 1) cools it down...
    assert ask(gw, model, fallback_models=["gpt-test"]).model == "gpt-test-upstream"
    assert upstream_models(fake_upstream) == ["fake-error-401", "gpt-test-upstream"]
    assert fake_upstream.requests[0].headers["authorization"] in ("Bearer sk-heavy-key", "Bearer sk-light-key")
    fake_upstream.reset()
    # ...but only the one deployment that failed: the other is still tried before the fallback.
    assert ask(gw, model, fallback_models=["gpt-test"]).model == "gpt-test-upstream"
    assert upstream_models(fake_upstream) == ["fake-error-401", "gpt-test-upstream"]
    fake_upstream.reset()
    assert ask(gw, model, fallback_models=["gpt-test"]).model == "gpt-test-upstream"
    assert upstream_models(fake_upstream) == ["gpt-test-upstream"]
