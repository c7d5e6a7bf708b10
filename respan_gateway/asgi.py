"""``respan_gateway.asgi:app``: the app built from ``$RESPAN_GATEWAY_CONFIG`` (or ``config/gateway.toml``).

For any ASGI server: ``hypercorn respan_gateway.asgi:app``, ``uvicorn respan_gateway.asgi:app``.
The CLI's ``serve`` uses it for its worker processes: there the app reloads the config file on
SIGHUP (:class:`~respan_gateway.app.ReloadingApp`).
"""

from __future__ import annotations

import os
from functools import partial

from .app import ReloadingApp, create_app
from .cli import SERVE_ENV, watch_master
from .config import Config, find_config_file
from .log import configure

configure()
watch_master()  # a worker of `respan-gateway serve` ends with its master (killed while it starts)
app = (ReloadingApp(find_config_file(), on_serving=partial(watch_master, serving=True)) if os.environ.get(SERVE_ENV)
       else create_app(Config.from_file(find_config_file())))
