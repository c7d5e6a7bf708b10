"""No secret gets past the gateway: not a provider key, a configured header value, nor a credential the
request brought, even when the upstream quotes them back (``echo-headers``: its error messages list the
request's headers), in a complete error answer or in an error event in the middle of a stream.

Checked where a user sees them: the client's error (SDK, real socket), the log record (logs API) and
the process log.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pytest

from respan_gateway import ProviderAdapter, hookimpl
from respan_gateway.testing import TEST_KEY, FakeUpstream, GatewayServer

CONFIG_KEY = "sk-config-leaky-key-0123456789"
HEADER_SECRET = "proxy-auth-secret-4567"
MESSAGES = [{"role": "user", "content": "hi"}]


def extra(fake: FakeUpstream) -> str:
    return f"""
[providers.leaky]
type = "openai_compatible"
base_url = "{fake.url}/v1"
api_key = "{CONFIG_KEY}"
headers = {{ "x-proxy-auth" = "{HEADER_SECRET}" }}
"""


@pytest.fixture
def gw(gateway_factory: Callable[..., GatewayServer], fake_upstream: FakeUpstream) -> GatewayServer:
    return gateway_factory(extra(fake_upstream))


def stream_error(gw: GatewayServer, model: str, body: dict[str, Any]) -> tuple[str, str]:
    """The error event's message and the log id of a stream that fails midway."""
    with httpx2.stream("POST", gw.base_url + "chat/completions", headers={"authorization": f"Bearer {TEST_KEY}"},
                       json={"model": model, "messages": MESSAGES, "stream": True, **body}, timeout=10) as r:
        assert r.status_code == 200
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        log_id = r.headers["x-respan-log-id"]
    errors = [json.loads(e)["error"]["message"] for e in events if e.startswith('{"error"')]
    assert len(errors) == 1, events
    return errors[0], log_id


REQUEST_CREDENTIALS = [
    pytest.param({}, CONFIG_KEY, id="config-key"),
    pytest.param({"credential_override": {"leaky/fake-X": {"api_key": "sk-request-override-0987"}}},
                 "sk-request-override-0987", id="credential_override"),
    pytest.param({"customer_credentials": {"leaky": {"api_key": "sk-customer-cred-6543"}}},
                 "sk-customer-cred-6543", id="customer_credentials"),
    pytest.param({"customer_credentials": [{"credentials": {"openai_compatible": {"api_key": "sk-customer-list-2222"}}}]},
                 "sk-customer-list-2222", id="customer_credentials-list"),
    pytest.param({"customer_api_keys": {"leaky/fake-X": "sk-legacy-customer-1111"}}, "sk-legacy-customer-1111",
                 id="customer_api_keys"),
]


def _body(body: dict[str, Any], model: str) -> dict[str, Any]:
    return json.loads(json.dumps(body).replace("leaky/fake-X", model))


@pytest.mark.parametrize(("body", "key"), REQUEST_CREDENTIALS)
def test_midstream_error_quoting_the_key_is_redacted(gw: GatewayServer, fake_upstream: FakeUpstream,
                                                    body: dict[str, Any], key: str) -> None:
    model = "leaky/fake-midstream-error,echo-headers"
    message, log_id = stream_error(gw, model, _body(body, model))
    # The upstream did quote them: the test would see them if the gateway passed them on.
    assert f"Bearer {key}" in fake_upstream.requests[-1].headers["authorization"]
    assert "mid-stream error" in message and "[redacted]" in message
    assert key not in message and HEADER_SECRET not in message
    record = gw.record(log_id)
    text = json.dumps(record)
    assert key not in text and HEADER_SECRET not in text
    assert "[redacted]" in record["error_message"]
    assert "[redacted]" in record["warnings"][-1]["error"]


@pytest.mark.parametrize(("body", "key"), REQUEST_CREDENTIALS)
def test_error_answer_quoting_key_and_headers_is_redacted(gw: GatewayServer, body: dict[str, Any], key: str) -> None:
    model = "leaky/fake-error-400,echo-headers"
    response = httpx2.post(gw.base_url + "chat/completions", headers={"authorization": f"Bearer {TEST_KEY}"},
                           json={"model": model, "messages": MESSAGES, **_body(body, model)}, timeout=10)
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "x-proxy-auth: [redacted]" in message
    assert key not in message and HEADER_SECRET not in message
    text = json.dumps(gw.record(response.headers["x-respan-log-id"]))
    assert key not in text and HEADER_SECRET not in text


def test_secret_extra_header_of_the_request_is_redacted(gw: GatewayServer) -> None:
    message, log_id = stream_error(gw, "leaky/fake-midstream-error,echo-headers",
                                   {"extra_headers": {"cf-aig-authorization": "Bearer cf-request-token-3333"}})
    assert "cf-request-token-3333" not in message
    assert "cf-request-token-3333" not in json.dumps(gw.record(log_id))


def test_sdk_sees_the_redacted_midstream_error(gw: GatewayServer) -> None:
    stream = gw.openai().chat.completions.create(model="leaky/fake-midstream-error,echo-headers", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError) as info:
        for _ in stream:
            pass
    assert CONFIG_KEY not in str(info.value.message) and HEADER_SECRET not in str(info.value.message)


PROCESS_LOG = """
import structlog
from respan_gateway import Gateway
from respan_gateway.config import Config
from respan_gateway.log import configure
configure()
Gateway.build(Config.from_text('''{config}''', "<test>"))
structlog.get_logger("respan_gateway").error("upstream_said", detail="the header was {header}")
"""


def test_configured_secrets_never_reach_the_process_log(fake_upstream: FakeUpstream) -> None:
    # A header value has no shape a pattern could catch: only the config says it is a secret.
    script = PROCESS_LOG.format(config=extra(fake_upstream), header=HEADER_SECRET)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert HEADER_SECRET not in done.stdout and "upstream_said" in done.stdout
    assert "[redacted]" in done.stdout


class _AcmeAdapter(ProviderAdapter):
    """A third party's adapter: its own credential header, declared on the class."""

    credential_headers = frozenset({"x-acme-key"})


class _AcmePlugin:
    __name__ = "acme_provider"

    @hookimpl
    def register_providers(self, register: Any) -> None:
        register("acme", _AcmeAdapter)


def test_no_client_sets_a_credential_header_of_any_registered_provider(gateway_factory: Callable[..., GatewayServer],
                                                                      fake_upstream: FakeUpstream) -> None:
    # Each adapter declares its credential headers; the gateway forbids all of them (and the hop-by-hop
    # ones) on every provider: an OpenAI-wire call must not carry Anthropic's, Gemini's or a plugin's.
    gw = gateway_factory(extra(fake_upstream), plugins=(_AcmePlugin(),))
    smuggled = {"Authorization": "Bearer sk-stolen-1", "x-api-key": "sk-stolen-2", "x-goog-api-key": "sk-stolen-3",
                "api-key": "sk-stolen-4", "X-Acme-Key": "sk-stolen-5", "x-harmless": "kept"}
    gw.openai().chat.completions.create(model="leaky/fake-model", messages=MESSAGES,
                                        extra_body={"extra_headers": smuggled})
    sent = fake_upstream.requests[-1].headers
    assert sent["authorization"] == f"Bearer {CONFIG_KEY}"
    assert not {"x-api-key", "x-goog-api-key", "api-key", "x-acme-key"} & set(sent)
    assert sent["x-harmless"] == "kept"


def test_the_whole_process_log_of_a_served_gateway_holds_no_secret(tmp_path: Any, fake_upstream: FakeUpstream) -> None:
    """`respan-gateway serve` (2 workers) answers good requests, a bad key, provider errors that quote
    the request's headers (keys of the config and of the request), in a complete answer and mid-stream:
    its whole stdout and stderr holds none of the keys, and the lines of the failed requests carry
    their request ids."""
    from respan_gateway.testing import GatewayProcess, test_config

    path = tmp_path / "gateway.toml"
    path.write_text(test_config(fake_upstream.url, extra(fake_upstream) + f'\n[database]\nurl = "sqlite:///{tmp_path}/s.sqlite3"\n'
                                                                          f'[logging]\nspill_dir = "{tmp_path}/spill"\n'))
    wrong_key, body_keys = "sk-client-wrong-key-7777", ["sk-request-override-process-1", "sk-customer-cred-process-2"]
    failed: list[str] = []
    with GatewayProcess(str(path), workers=2) as gw:
        url, auth = gw.base_url + "chat/completions", {"authorization": f"Bearer {TEST_KEY}"}
        assert httpx2.post(url, headers=auth, json={"model": "gpt-test", "messages": MESSAGES}, timeout=10).status_code == 200
        assert httpx2.post(url, headers={"authorization": f"Bearer {wrong_key}"},
                           json={"model": "gpt-test", "messages": MESSAGES}, timeout=10).status_code == 401
        for body in ({}, {"credential_override": {"leaky/fake-error-502,echo-headers": {"api_key": body_keys[0]}}},
                     {"customer_credentials": {"leaky": {"api_key": body_keys[1]}}}):
            r = httpx2.post(url, headers=auth, timeout=10,
                            json={"model": "leaky/fake-error-502,echo-headers", "messages": MESSAGES, **body})
            assert r.status_code == 502 and "[redacted]" in r.json()["error"]["message"]
            failed.append(r.headers["x-respan-gateway-request-id"])
        message, _ = stream_error(gw, "leaky/fake-midstream-error,echo-headers",  # type: ignore[arg-type]
                                  {"customer_credentials": {"leaky": {"api_key": body_keys[1]}}})
        assert "[redacted]" in message
        # Proof that the upstream saw (and quoted back) every one of them.
        quoted = " ".join(r.headers.get("authorization", "") + r.headers.get("x-proxy-auth", "") for r in fake_upstream.requests)
        assert all(k in quoted for k in [CONFIG_KEY, HEADER_SECRET, *body_keys])
    output = gw.log()  # after the drain: the workers' last lines included
    assert "request_failed" in output and "listening on" in output
    for secret in [TEST_KEY, wrong_key, CONFIG_KEY, HEADER_SECRET, "sk-upstream-secret-key", *body_keys]:
        assert secret not in output, f"{secret} is in the process log:\n{output}"
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    failures = {line["request_id"] for line in lines if line.get("event") == "request_failed"}
    assert set(failed) <= failures, output
