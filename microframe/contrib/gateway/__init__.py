"""The HTTP/JSON gateway: a service's RPCs as HTTP/JSON, under gunicorn.

::

    # orders/wsgi.py
    from microframe.contrib.gateway import get_wsgi_application

    application = get_wsgi_application()

``gunicorn orders.wsgi`` then answers ``POST /orders.Orders/GetOrder`` with a JSON body, the
routes of the protos' ``google.api.http`` annotations, and ``GET /healthz``. The ``GATEWAY``
setting configures it; the docs' "HTTP/JSON gateway" topic has the details.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from microframe.contrib.gateway.app import GatewayApplication

__all__ = ["GatewayApplication", "get_wsgi_application"]


def get_wsgi_application(**options: Any) -> GatewayApplication:
    """Return the WSGI application of the service whose settings are configured.

    ``options`` override keys of the ``GATEWAY`` setting (``ADDRESS="127.0.0.1:50051"``...).
    Every route is built here, once. Logging is gunicorn's (its error log); the service's own
    log files stay the gRPC server's.
    """
    from microframe.contrib.gateway.app import GatewayApplication

    return GatewayApplication(options={k.upper(): v for k, v in options.items()})


def __getattr__(name: str) -> Any:
    """``GatewayApplication``, imported when asked for: loading the battery (its checks, for
    ``check`` or ``help``) does not import the WSGI application and the client behind it."""
    if name == "GatewayApplication":
        from microframe.contrib.gateway.app import GatewayApplication

        return GatewayApplication
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
