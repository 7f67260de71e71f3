"""Prometheus metrics of the gRPC server and clients, named as go-grpc-prometheus names them.

- :mod:`~microframe.contrib.metrics.metrics`: the metric objects;
- :mod:`~microframe.contrib.metrics.middleware`: ``MetricsMiddleware``, first in ``MIDDLEWARE``;
- :mod:`~microframe.contrib.metrics.exposition`: the ``/metrics`` HTTP endpoint.

Settings: ``METRICS = {"ENABLED", "HOST", "PORT", "LABELS", "BUCKETS"}``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MetricsMiddleware", "client_metrics", "server_metrics", "start_http_server"]

_LAZY = {
    "MetricsMiddleware": "microframe.contrib.metrics.middleware",
    "server_metrics": "microframe.contrib.metrics.metrics",
    "client_metrics": "microframe.contrib.metrics.metrics",
    "start_http_server": "microframe.contrib.metrics.exposition",
}


def __getattr__(name: str) -> Any:
    """Import the public names on first use, so importing the package stays cheap."""
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    import importlib

    return getattr(importlib.import_module(module), name)
