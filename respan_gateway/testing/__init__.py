"""Test helpers for respan-gateway and its plugins: part of the public API for plugin authors.

- :class:`FakeUpstream`: an OpenAI-compatible fake provider on a real loopback socket, with faults.
- :class:`GatewayServer`: the gateway itself on a real socket, from a config (in a thread); ``record(log_id)`` reads a log record.
- :class:`GatewayProcess`: the real CLI (`respan-gateway serve`) as a subprocess.
- :class:`TcpProxy`: a TCP proxy a test shuts and reopens (a database or Redis outage).
- :class:`CallRecorder`: a plugin for one test that keeps every call, to read what the stages decided.
- :func:`test_config`, :data:`TEST_KEY`: a config to start from, and its gateway key.
- ``respan_gateway.testing.pytest_plugin``: fixtures (``fake_upstream``, ``gateway``, ``gateway_factory``).
"""

from .call_recorder import CallRecorder
from .fake_upstream import FakeUpstream, RecordedRequest
from .gateway_server import TEST_KEY, GatewayProcess, GatewayServer, test_config
from .tcp_proxy import TcpProxy

__all__ = ["TEST_KEY", "CallRecorder", "FakeUpstream", "GatewayProcess", "GatewayServer", "RecordedRequest", "TcpProxy", "test_config"]
