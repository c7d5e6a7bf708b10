"""Traces reach an OTLP/HTTP collector as a user's collector receives them: the test runs one (an
http.server decoding the protobuf with opentelemetry-proto) and reads the span tree, the gen_ai.*
attributes and the traceparent the fake upstream was sent."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from respan_gateway.testing import TEST_KEY, FakeUpstream, GatewayServer

MESSAGES = [{"role": "user", "content": "Say hello"}]
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class Collector:
    """An OTLP/HTTP trace receiver on 127.0.0.1: every span it was sent, with its resource."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.resources: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                request = ExportTraceServiceRequest.FromString(body)
                collector.paths.append(self.path)
                collector.headers.append({k.lower(): v for k, v in self.headers.items()})
                for resource_spans in request.resource_spans:
                    resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            collector.resources.append(resource)
                            collector.spans.append(span)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def wait_for(self, count: int, timeout: float = 10) -> list[Span]:
        deadline = time.monotonic() + timeout
        while len(self.spans) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.spans)


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def attrs(span: Span) -> dict[str, Any]:
    return {a.key: _value(a.value) for a in span.attributes}


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    c.thread.start()
    yield c
    c.server.shutdown()
    c.server.server_close()


@pytest.fixture
def traced(gateway_factory: Callable[..., GatewayServer], collector: Collector, tmp_path: Any) -> GatewayServer:
    return gateway_factory(f"""
[database]
url = "sqlite:///{tmp_path}/t.sqlite3"
[logging]
spill_dir = "{tmp_path}/spill"
[tracing]
otlp_endpoint = "{collector.url}"
headers = {{ "x-collector-key" = "collector-secret-123" }}
service_name = "gateway-under-test"
schedule_delay = 0.05
""")


def test_a_request_with_a_fallback_is_one_span_with_a_child_per_attempt(traced: GatewayServer, collector: Collector,
                                                                         fake_upstream: FakeUpstream) -> None:
    client = traced.openai()
    raw = client.chat.completions.with_raw_response.create(
        model="fake/fake-error-500", messages=MESSAGES, temperature=0.2,
        extra_headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
        extra_body={"fallback_models": ["gpt-test"]})
    assert raw.parse().choices[0].message.content == "Hello from the fake upstream!"
    spans = collector.wait_for(3)
    assert len(spans) == 3, spans
    assert collector.paths == ["/v1/traces"] * len(collector.paths)
    assert collector.headers[0]["x-collector-key"] == "collector-secret-123"
    assert collector.resources[0]["service.name"] == "gateway-under-test"

    (request,) = [s for s in spans if s.kind == Span.SPAN_KIND_SERVER]
    attempts = sorted((s for s in spans if s.kind == Span.SPAN_KIND_CLIENT), key=lambda s: s.start_time_unix_nano)
    assert len(attempts) == 2
    # The client's trace, the client's span as parent; the attempts are children of the request.
    assert request.trace_id.hex() == CLIENT_TRACE and request.parent_span_id.hex() == CLIENT_SPAN
    for attempt in attempts:
        assert attempt.trace_id == request.trace_id and attempt.parent_span_id == request.span_id
        assert request.start_time_unix_nano <= attempt.start_time_unix_nano <= attempt.end_time_unix_nano <= request.end_time_unix_nano

    a = attrs(request)
    assert request.name == "chat fake/fake-error-500"
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "fake/fake-error-500"
    assert a["gen_ai.request.temperature"] == pytest.approx(0.2)
    assert a["gen_ai.response.model"] == "gpt-test-upstream"  # the model the upstream says answered
    assert a["gen_ai.provider.name"] == a["gen_ai.system"] == "openai_compatible"
    assert a["gen_ai.usage.input_tokens"] == 2 and a["gen_ai.usage.output_tokens"] == 5
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert a["http.response.status_code"] == 200 and a["respan.upstream_attempts"] == 2
    assert a["respan.log_id"] == raw.headers["x-respan-log-id"]
    assert a["respan.request_id"] == raw.headers["x-respan-gateway-request-id"]
    assert request.status.code == 0  # unset: it succeeded

    first, second = (attrs(s) for s in attempts)
    assert attempts[0].name == "chat fake-error-500" and attempts[1].name == "chat gpt-test-upstream"
    assert first["http.response.status_code"] == 500 and first["error.type"] == "500"
    assert attempts[0].status.code == 2 and "fake upstream error 500" in attempts[0].status.message
    assert first["gen_ai.request.model"] == "fake-error-500" and first["respan.provider.id"] == "fake"
    assert first["server.address"] == "127.0.0.1"
    assert second["http.response.status_code"] == 200 and "error.type" not in second
    assert second["gen_ai.request.model"] == "gpt-test-upstream"
    assert second["gen_ai.usage.output_tokens"] == 5

    # Each upstream request carried the traceparent of its own attempt's span.
    sent = [r.headers["traceparent"] for r in fake_upstream.requests]
    assert sent == [f"00-{CLIENT_TRACE}-{s.span_id.hex()}-01" for s in attempts]
    # The collector's key is the plugin's secret: never in the process log lines (redacted by value).
    from respan_gateway.log import redact_value
    assert redact_value("key collector-secret-123") == "key [redacted]"


def test_a_stream_ends_its_spans_when_it_ends_and_a_new_trace_starts_without_traceparent(
        traced: GatewayServer, collector: Collector, fake_upstream: FakeUpstream) -> None:
    chunks = list(traced.openai().chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True,
                                                          stream_options={"include_usage": True}))
    assert chunks
    spans = collector.wait_for(2)
    assert len(spans) == 2
    request = next(s for s in spans if s.kind == Span.SPAN_KIND_SERVER)
    attempt = next(s for s in spans if s.kind == Span.SPAN_KIND_CLIENT)
    assert not request.parent_span_id and attempt.parent_span_id == request.span_id
    assert attrs(request)["respan.stream"] is True
    assert attrs(request)["gen_ai.usage.output_tokens"] == 5
    assert attrs(attempt)["gen_ai.usage.output_tokens"] == 5  # known once the stream ended
    assert attempt.end_time_unix_nano <= request.end_time_unix_nano
    # (flags 03: sampled, and the W3C level 2 flag of a random trace id the SDK made)
    assert fake_upstream.requests[-1].headers["traceparent"][:-3] == f"00-{request.trace_id.hex()}-{attempt.span_id.hex()}"


def test_a_refused_request_has_its_span(traced: GatewayServer, collector: Collector) -> None:
    r = httpx2.post(traced.base_url + "chat/completions", headers={"authorization": "Bearer sk-wrong"},
                    json={"model": "gpt-test", "messages": MESSAGES}, timeout=10)
    assert r.status_code == 401
    (span,) = collector.wait_for(1)
    assert attrs(span)["http.response.status_code"] == 401 and attrs(span)["error.type"] == "401"
    assert span.status.code == 0  # a client's error: not the server span's


def test_tracing_is_not_in_the_pipeline_unless_configured(gateway_factory: Callable[..., GatewayServer],
                                                          fake_upstream: FakeUpstream) -> None:
    gw = gateway_factory()
    names = [name for name, _ in gw.gateway.middlewares] + [name for name, _ in gw.gateway.observers]
    assert "tracing" not in names and "tracing_attempt" not in names
    r = httpx2.post(gw.base_url + "chat/completions", headers={"authorization": f"Bearer {TEST_KEY}",
                                                                "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
                    json={"model": "gpt-test", "messages": MESSAGES}, timeout=10)
    assert r.status_code == 200
    assert "traceparent" not in fake_upstream.requests[-1].headers


def test_tracing_off_loads_none_of_its_opentelemetry_code() -> None:
    # (The redis client imports opentelemetry's API on its own when it is installed: not checked here.)
    import subprocess
    import sys

    script = ("import sys\nfrom respan_gateway import Gateway\nfrom respan_gateway.config import Config\n"
              "Gateway.build(Config.from_text('[providers.mock]\\ntype = \"mock\"\\n'))\n"
              "print('respan_plugins.tracing' in sys.modules, 'respan_plugins.tracing.otel' in sys.modules,"
              " 'opentelemetry.exporter.otlp.proto.http.trace_exporter' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "RESPAN_GATEWAY_CONFIG": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "True False False"
