"""GET /metrics parses as Prometheus text, and its series move with the requests a client makes."""

from __future__ import annotations

import re
import time

import httpx2
import openai
import pytest

from respan_gateway.testing import TEST_KEY

MESSAGES = [{"role": "user", "content": "Say hello"}]
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (-?[0-9.e+-]+|\+Inf|-Inf|NaN)$')


def parse(text: str) -> dict[str, float]:
    """Every sample of a Prometheus text exposition, keyed by `name{labels}`; fails on a bad line."""
    samples: dict[str, float] = {}
    types: dict[str, str] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            types[name] = kind
            continue
        if line.startswith("#") or not line:
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        base = re.sub(r"_(bucket|sum|count)$", "", m[1])
        assert m[1] in types or base in types, f"sample without a TYPE: {line!r}"
        samples[m[1] + (m[2] or "")] = float(m[3])
    return samples


def scrape(url: str) -> dict[str, float]:
    r = httpx2.get(url + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(r.text)


def test_metrics_parse_and_counters_move(gateway_factory, tmp_path) -> None:
    gw = gateway_factory(f'[database]\nurl = "sqlite:///{tmp_path}/m.sqlite3"\n[logging]\nspill_dir = "{tmp_path}/spill"\nflush_interval = 0.05\n')
    before = scrape(gw.url)
    ok = '{endpoint="chat",model="gpt-test",provider="fake",status_code="200"}'
    assert before.get("respan_gateway_requests_total" + ok, 0) == 0
    client = gw.openai()
    client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    list(client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True,
                                        stream_options={"include_usage": True}))
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="fake/fake-error-400", messages=MESSAGES)
    after = scrape(gw.url)
    assert after["respan_gateway_requests_total" + ok] == 2
    err = '{endpoint="chat",model="other",provider="fake",status_code="400"}'  # a slug the catalog does not name
    assert after["respan_gateway_request_errors_total" + err] == 1
    assert after['respan_gateway_request_duration_seconds_count{model="gpt-test",provider="fake"}'] == 2
    assert after['respan_gateway_time_to_first_token_seconds_count{model="gpt-test",provider="fake"}'] == 1
    assert after['respan_gateway_overhead_seconds_count{endpoint="chat"}'] == 3
    assert after['respan_gateway_tokens_total{model="gpt-test",provider="fake",type="prompt"}'] == 4
    assert after['respan_gateway_tokens_total{model="gpt-test",provider="fake",type="completion"}'] == 10
    assert after['respan_gateway_cost_usd_total{model="gpt-test",provider="fake"}'] == pytest.approx((4 * 1.0 + 10 * 2.0) / 1e6)
    assert after['respan_gateway_upstream_attempts_total{model="gpt-test",provider="fake",status_code="200"}'] == 2
    assert after["respan_gateway_requests_in_flight"] == 0
    assert after["respan_gateway_log_store_up"] == 1
    assert after["respan_gateway_log_queue_depth"] >= 0 and after["respan_gateway_log_spill_pending"] == 0


def test_metrics_can_require_a_key(gateway_factory, tmp_path) -> None:
    gw = gateway_factory(f'[database]\nurl = "sqlite:///{tmp_path}/m.sqlite3"\n[logging]\nspill_dir = "{tmp_path}/spill"\n[metrics]\nrequire_auth = true\n')
    assert httpx2.get(gw.url + "/metrics", timeout=10).status_code == 401
    r = httpx2.get(gw.url + "/metrics", headers={"authorization": f"Bearer {TEST_KEY}"}, timeout=10)
    assert r.status_code == 200 and parse(r.text)


def test_made_up_model_names_do_not_grow_the_metrics(gateway_factory, tmp_path) -> None:
    # Unknown slugs (404) and `<provider>/<anything>` slugs the catalog does not name are one "other"
    # model: 200 distinct names leave /metrics as large as 2 did.
    gw = gateway_factory(f'[database]\nurl = "sqlite:///{tmp_path}/m.sqlite3"\n[logging]\nspill_dir = "{tmp_path}/spill"\nflush_interval = 0.05\n')
    client = gw.openai()

    def burst(names: range) -> None:
        for i in names:
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.create(model=f"no-such-model-{i}", messages=MESSAGES)
            client.chat.completions.create(model=f"fake/made-up-{i}", messages=MESSAGES)

    burst(range(2))
    before = scrape(gw.url)
    burst(range(2, 200))
    after = scrape(gw.url)
    assert set(after) == set(before)
    assert after['respan_gateway_requests_total{endpoint="chat",model="other",provider="fake",status_code="200"}'] == 200
    assert after['respan_gateway_requests_total{endpoint="chat",model="other",provider="",status_code="404"}'] == 200
    assert not any("made-up" in key or "no-such-model" in key for key in after)


def test_every_label_set_is_bounded(gateway_factory, tmp_path) -> None:
    # Label values the config names can still multiply (models x providers x statuses): past
    # `max_series` label sets, a series counts new ones under all-"other" labels.
    gw = gateway_factory(f'[database]\nurl = "sqlite:///{tmp_path}/m.sqlite3"\n[logging]\nspill_dir = "{tmp_path}/spill"\nflush_interval = 0.05\n'
                         '[metrics]\nmax_series = 2\n')
    client = gw.openai()
    client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    for status in (400, 401, 429):
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(model="gpt-test", messages=MESSAGES,
                                           extra_body={"extra_headers": {"x-fake-scenario": f"error-{status}"}})
    after = scrape(gw.url)
    requests = {k: v for k, v in after.items() if k.startswith("respan_gateway_requests_total{")}
    assert requests == {
        'respan_gateway_requests_total{endpoint="chat",model="gpt-test",provider="fake",status_code="200"}': 1,
        'respan_gateway_requests_total{endpoint="chat",model="gpt-test",provider="fake",status_code="400"}': 1,
        'respan_gateway_requests_total{endpoint="other",model="other",provider="other",status_code="other"}': 2,
    }


def test_metrics_count_requests_with_the_logging_plugin_disabled(gateway_factory) -> None:
    gw = gateway_factory('[plugins]\ndisabled = ["logging"]\n')
    client = gw.openai()
    client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    list(client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True))
    after = scrape(gw.url)
    ok = '{endpoint="chat",model="gpt-test",provider="fake",status_code="200"}'
    assert after["respan_gateway_requests_total" + ok] == 2
    assert after['respan_gateway_tokens_total{model="gpt-test",provider="fake",type="completion"}'] > 0
    assert after['respan_gateway_time_to_first_token_seconds_count{model="gpt-test",provider="fake"}'] == 1
    assert not any(name.startswith("respan_gateway_log_") for name in after)  # logging's own gauges are gone with it


def test_series_of_repeated_requests_and_cache_hits_keep_their_labels(gateway_factory, tmp_path) -> None:
    """The label sets are built once per (endpoint, model, provider, status): the same request again,
    a cache hit and an error each move their own series, with the labels of the first time."""
    gw = gateway_factory(f'[database]\nurl = "sqlite:///{tmp_path}/m.sqlite3"\n[logging]\nspill_dir = "{tmp_path}/spill"\n')
    client = gw.openai()
    for _ in range(3):
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    for _ in range(3):  # one miss, then two hits
        client.chat.completions.create(model="gpt-test", messages=MESSAGES, extra_body={"cache_enabled": True})
    for _ in range(2):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="fake/fake-error-400", messages=MESSAGES)
    after = scrape(gw.url)
    assert after['respan_gateway_requests_total{endpoint="chat",model="gpt-test",provider="fake",status_code="200"}'] == 4
    assert after['respan_gateway_requests_total{endpoint="chat",model="respan/cache",provider="",status_code="200"}'] == 2
    assert after['respan_gateway_cache_hits_total{endpoint="chat"}'] == 2
    assert after['respan_gateway_request_errors_total{endpoint="chat",model="other",provider="fake",status_code="400"}'] == 2
    assert after['respan_gateway_overhead_seconds_count{endpoint="chat"}'] == 8
    assert after['respan_gateway_tokens_total{model="gpt-test",provider="fake",type="prompt"}'] == 4 * 2
    assert after['respan_gateway_tokens_total{model="gpt-test",provider="fake",type="completion"}'] == 4 * 5
    assert after['respan_gateway_upstream_attempts_total{model="gpt-test",provider="fake",status_code="200"}'] == 4
    assert after['respan_gateway_upstream_attempts_total{model="other",provider="fake",status_code="400"}'] == 2
    assert not [k for k in after if k.startswith("respan_gateway_cache_hits_total") and 'endpoint="chat"' not in k]


def test_in_flight_counts_a_stream_until_it_ends_or_its_client_leaves(gateway_factory) -> None:
    """The gauge holds a stream from its request to its end (Gateway.finish lets it go, no wrapper around
    its chunks): 1 while one is open, 0 once it has ended, and 0 again after a client left one."""
    gw = gateway_factory()
    client = gw.openai()

    def in_flight() -> float:
        return scrape(gw.url)["respan_gateway_requests_in_flight"]

    for finish in ("read", "leave"):
        stream = client.chat.completions.create(model="fake/fake-slow-chunks-300,chunks-8", messages=MESSAGES, stream=True)
        next(iter(stream))
        assert in_flight() == 1, finish
        if finish == "read":
            list(stream)
        else:
            stream.close()  # the client leaves mid-stream
        deadline = time.monotonic() + 10
        while in_flight() != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert in_flight() == 0, finish
