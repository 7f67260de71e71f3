"""``serve()``: the service's own server, in the test's event loop, on a free loopback port.

::

    from microframe.test import serve
    from orders.generate.orders_client import OrdersClient

    async def test_get():
        async with serve() as server:
            reply = await OrdersClient("orders", address=server.address).Get(GetRequest(id=1))

The routes of ``ROOT_ROUTER`` are served through ``MIDDLEWARE``, exactly as ``runserver`` builds
them, with health and reflection as configured; nothing is registered and no metrics port is
opened. The server stops (with a short grace) when the block ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from microframe.core.server import Server


@contextlib.asynccontextmanager
async def serve(
    *,
    routes: Sequence[Any] | None = None,
    middleware: Sequence[Any] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    grace: float = 1.0,
) -> AsyncIterator[Server]:
    """Serve ``routes`` (default: ``ROOT_ROUTER``'s) until the block ends; yield the server.

    ``server.address`` is the ``host:port`` to call; ``port=0`` picks a free port.
    """
    from microframe.conf import settings
    from microframe.core.router import load_routes
    from microframe.core.server import ServerConfig

    server = Server(
        list(routes) if routes is not None else load_routes(settings.ROOT_ROUTER),
        middleware=list(middleware) if middleware is not None else settings.MIDDLEWARE,
        config=ServerConfig.from_settings(host=host, port=port, shutdown_delay=0.0, grace=grace),
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace)
