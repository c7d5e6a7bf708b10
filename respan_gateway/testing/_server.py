"""Serve an ASGI app on a real loopback socket from a background thread (hypercorn, own event loop)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config, Sockets
from hypercorn.utils import wrap_app

_log = logging.getLogger("respan_gateway.testing")


class ServerThread:
    """``start()`` binds 127.0.0.1:<free port> and returns once the app's lifespan has started.

    ``sock`` may be a pre-bound listening socket (the fake upstream uses one that tracks connections).
    """

    def __init__(self, app: Any, *, name: str = "server", sock: socket.socket | None = None, graceful_timeout: float = 1.0) -> None:
        self.app = app
        self.name = name
        self.graceful_timeout = graceful_timeout
        self._sock = sock
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.url = ""

    def start(self) -> ServerThread:
        if self._thread is not None:
            raise RuntimeError(f"{self.name} already started")
        if self._sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind(("127.0.0.1", 0))
            sock.listen(1024)
            sock.setblocking(False)
            self._sock = sock
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-{self.url}", daemon=True)
        self._thread.start()
        # A deadline only (the lifespan's start-up: migrations, connections; slow on a busy machine).
        if not self._ready.wait(120) or self._error is not None:
            self.stop()
            raise RuntimeError(f"{self.name} failed to start") from self._error
        return self

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None:
            return
        if loop is not None and not loop.is_closed() and self._closing is not None:
            try:
                loop.call_soon_threadsafe(self._closing.set)
            except RuntimeError:  # the loop closed meanwhile
                pass
        thread.join(timeout=30)
        if self._sock is not None:
            self._sock.close()
        self._thread = self._loop = None

    @property
    def closing(self) -> asyncio.Event | None:
        """Set when the server starts shutting down (an app may cut its waits short on it)."""
        return self._closing

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the server's loop (e.g. to inspect or flush state) and return its result."""
        if self._loop is None:
            raise RuntimeError(f"{self.name} is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # surfaced by start() when it happens before readiness
            self._error = exc
            _log.exception("%s crashed", self.name)
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._closing = asyncio.Event()
        config = Config()
        config.accesslog = None
        config.errorlog = _log
        config.graceful_timeout = self.graceful_timeout
        config.include_server_header = False
        sockets = Sockets(secure_sockets=[], insecure_sockets=[self._sock], quic_sockets=[])
        app = wrap_app(self.app, config.wsgi_max_body_size, "asgi")

        async def ready_then_wait() -> None:
            self._ready.set()
            await self._closing.wait()

        # worker_serve is what hypercorn.asyncio.serve calls; it takes pre-bound `sockets`, so the
        # port is known before the server starts. Readiness is signalled once startup has run.
        await worker_serve(app, config, sockets=sockets, shutdown_trigger=ready_then_wait)
