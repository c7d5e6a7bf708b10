"""Admission control: a worker answers at most `[server] max_in_flight` requests at once (streams until
they end); one more gets a fast 503 with Retry-After, and the health probes are always answered."""

from __future__ import annotations

import contextlib
import time

import httpx2
import openai
import pytest

from respan_gateway.testing import TEST_KEY

MESSAGES = [{"role": "user", "content": "hi"}]
AUTH = {"authorization": f"Bearer {TEST_KEY}"}


def test_past_max_in_flight_a_request_gets_a_fast_503_and_health_is_still_answered(gateway_factory) -> None:
    gw = gateway_factory("[server]\nmax_in_flight = 2\n")
    stalled = {"model": "gpt-test", "messages": MESSAGES, "stream": True,
               "extra_headers": {"x-fake-scenario": "stall-after-1"}}
    with contextlib.ExitStack() as streams:
        for _ in range(2):  # two streams that stay open: the worker's whole budget
            r = streams.enter_context(httpx2.stream("POST", gw.base_url + "chat/completions", headers=AUTH, json=stalled, timeout=30))
            assert r.status_code == 200
        with pytest.raises(openai.APIStatusError) as caught:
            gw.openai().chat.completions.create(model="gpt-test", messages=MESSAGES)
        assert caught.value.status_code == 503
        assert caught.value.response.headers["retry-after"] == "1"
        assert caught.value.body["code"] == "gateway_overloaded" and caught.value.body["type"] == "server_error"
        assert httpx2.get(gw.url + "/healthz", timeout=10).status_code == 200
        assert httpx2.get(gw.url + "/readyz", timeout=10).status_code == 200
    # The streams ended (the client left): their places are free again.
    deadline = time.monotonic() + 60
    while True:
        r = httpx2.post(gw.base_url + "chat/completions", headers=AUTH, json={"model": "gpt-test", "messages": MESSAGES}, timeout=10)
        if r.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert r.status_code == 200, r.text
