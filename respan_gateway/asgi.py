"""``respan_gateway.asgi:app``: the app built from ``$RESPAN_GATEWAY_CONFIG`` (or ``config/gateway.toml``).

For any ASGI server: ``hypercorn respan_gateway.asgi:app``, ``uvicorn respan_gateway.asgi:app``.
The CLI's ``serve`` uses it for its worker processes.
"""

from __future__ import annotations

from .app import create_app
from .cli import watch_master
from .config import Config, find_config_file
from .log import configure

configure()
watch_master()  # a worker of `respan-gateway serve` ends with its master
app = create_app(Config.from_file(find_config_file()))
