"""Serve the metrics over HTTP for Prometheus to scrape.

``runserver`` calls :func:`start_http_server` with ``METRICS["HOST"]``, ``METRICS["PORT"]`` and
``METRICS["LABELS"]``; a program serving by itself does the same::

    from microframe.contrib.metrics.exposition import start_http_server

    server = start_http_server("127.0.0.1", 9464, labels={"env": "prod", "idc": "bj"})
    ...
    server.close()

The server answers ``GET /metrics`` in the Prometheus text format, or in OpenMetrics when the
scraper asks for it in its ``Accept`` header (gzip-compressed when it accepts gzip, restricted
to some metrics with ``?name[]=...``), and ``GET /healthz`` with ``ok``. It runs on a
background thread and never touches the event loop.

The constant labels are added to every sample when it is collected, so recording a metric
costs nothing more for them.
"""

from __future__ import annotations

import copy
import re
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client import make_wsgi_app as make_prometheus_app
from prometheus_client.exposition import ThreadingWSGIServer, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector

from microframe.core.exceptions import ImproperlyConfigured

__all__ = [
    "ConstantLabelsCollector",
    "MetricsServer",
    "make_collector",
    "make_wsgi_app",
    "mark_process_dead",
    "render_metrics",
    "start_http_server",
]

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _validated_labels(labels: Mapping[str, Any] | None) -> dict[str, str]:
    if not labels:
        return {}
    if not isinstance(labels, Mapping):
        raise ImproperlyConfigured(
            f'METRICS["LABELS"] must be a mapping of label names to values, not {labels!r}.'
        )
    checked: dict[str, str] = {}
    for name, value in labels.items():
        if not isinstance(name, str) or not _LABEL_NAME.match(name) or name.startswith("__"):
            raise ImproperlyConfigured(
                f'METRICS["LABELS"]: {name!r} is not a valid Prometheus label name '
                "(letters, digits and underscores, not starting with a digit or '__')."
            )
        if value is None:
            raise ImproperlyConfigured(f'METRICS["LABELS"]: the label {name!r} has no value.')
        checked[name] = str(value)
    return checked


_CREATED_TYPES = frozenset({"counter", "histogram", "summary"})


class ConstantLabelsCollector(Collector):
    """Collect the metrics of ``source`` with ``labels`` added to every sample.

    A sample that already has one of these labels keeps its own value. Unless ``created`` is
    true, the ``<name>_created`` samples of counters, histograms and summaries are left out:
    go-grpc-prometheus exports none, nor does prometheus_client in multiprocess mode, and
    each would double the number of series Prometheus stores.
    """

    def __init__(
        self,
        source: Collector,
        labels: Mapping[str, Any],
        *,
        created: bool = False,
        names: Iterable[str] | None = None,
    ) -> None:
        self.source = source
        self.labels = _validated_labels(labels)
        self.created = created
        #: Sample names to keep (``?name[]=`` of the request), or None for all.
        self.names = frozenset(names) if names is not None else None

    def collect(self) -> Iterator[Metric]:
        extra = self.labels
        keep_created = self.created
        names = self.names
        for metric in self.source.collect():
            samples = metric.samples
            if names is not None:
                samples = [s for s in samples if s.name in names]
                if not samples:
                    continue
            if not keep_created and metric.type in _CREATED_TYPES:
                created = f"{metric.name}_created"
                samples = [s for s in samples if s.name != created]
            if extra:
                samples = [
                    s._replace(
                        labels={**s.labels, **{k: v for k, v in extra.items() if k not in s.labels}}
                    )
                    for s in samples
                ]
            if samples is metric.samples:
                yield metric
            else:
                changed = copy.copy(metric)
                changed.samples = samples
                yield changed

    def restricted_registry(self, names: Iterable[str]) -> ConstantLabelsCollector:
        """Return the same collector keeping only the samples named ``names`` (``?name[]=``)."""
        return ConstantLabelsCollector(self.source, self.labels, created=self.created, names=names)


def make_collector(
    *,
    labels: Mapping[str, str] | None = None,
    multiprocess_dir: str | None = None,
    registry: Collector | None = None,
    created: bool = False,
) -> ConstantLabelsCollector:
    """Return the collector the endpoint exports.

    Without ``multiprocess_dir`` it is ``registry`` (default: prometheus_client's default
    registry, which also holds the ``process_*``, ``python_gc_*`` and ``python_info``
    metrics). With it, a new registry aggregating the files every process wrote in that
    directory (prometheus_client's multiprocess mode), plus the metrics of this process
    itself (``process_*``, ``python_*``: the supervisor's, in ``runserver --workers``).
    ``labels`` are added to every sample; ``created`` keeps the ``_created`` samples (see
    :class:`ConstantLabelsCollector`).
    """
    if multiprocess_dir is not None:
        from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
        from prometheus_client.multiprocess import MultiProcessCollector

        aggregated = CollectorRegistry()
        try:
            MultiProcessCollector(aggregated, path=multiprocess_dir)
        except ValueError as err:
            raise ImproperlyConfigured(f"Metrics multiprocess directory: {err}") from err
        ProcessCollector(registry=aggregated)
        PlatformCollector(registry=aggregated)
        GCCollector(registry=aggregated)
        source: Collector = aggregated
    else:
        source = registry if registry is not None else REGISTRY
    return ConstantLabelsCollector(source, labels or {}, created=created)


def render_metrics(
    labels: Mapping[str, str] | None = None,
    *,
    multiprocess_dir: str | None = None,
    registry: Collector | None = None,
    created: bool = False,
    openmetrics: bool = False,
) -> bytes:
    """Return what ``GET /metrics`` would answer, in the text format (or OpenMetrics)."""
    collector = make_collector(
        labels=labels, multiprocess_dir=multiprocess_dir, registry=registry, created=created
    )
    return generate_openmetrics(collector) if openmetrics else generate_latest(collector)  # type: ignore[arg-type]


_INDEX = b"microframe metrics: GET /metrics\n"


def make_wsgi_app(collector: Collector) -> WSGIApp:
    """Return the WSGI application serving ``/metrics`` from ``collector`` and ``/healthz``."""
    metrics_app = make_prometheus_app(collector)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path in ("/metrics", "/metrics/"):
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            body = b"ok\n"
        elif path == "/":
            body = _INDEX
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: the metrics are at /metrics\n"]
        start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
        return [body]

    return app


class _QuietHandler(WSGIRequestHandler):
    """Request handler that does not log every scrape to stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _server_class(host: str, port: int) -> type[ThreadingWSGIServer]:
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as err:
        raise OSError(f"cannot resolve {host!r}: {err}") from err
    family = infos[0][0]

    class Server(ThreadingWSGIServer):
        address_family = family

        def server_bind(self) -> None:
            # Skip HTTPServer.server_bind: its socket.getfqdn() may wait on a DNS lookup.
            socketserver.TCPServer.server_bind(self)
            host, port = self.server_address[:2]
            self.server_name = str(host)
            self.server_port = int(port)
            self.setup_environ()

    return Server


class MetricsServer:
    """The running HTTP endpoint: ``host``, ``port`` (the port bound) and :meth:`close`."""

    def __init__(self, httpd: ThreadingWSGIServer, thread: threading.Thread, host: str) -> None:
        self.httpd = httpd
        self.thread = thread
        self.host = host
        self.port: int = httpd.server_address[1]
        self._closed = False

    @property
    def url(self) -> str:
        """Return the URL of the metrics page."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url}>"


def start_http_server(
    host: str,
    port: int,
    *,
    labels: Mapping[str, str] | None = None,
    multiprocess_dir: str | None = None,
    registry: Collector | None = None,
    created: bool = False,
) -> MetricsServer:
    """Serve the metrics on ``host:port`` (0 picks a free port) from a background thread.

    ``labels`` are added to every sample exported. With ``multiprocess_dir`` the endpoint
    aggregates the metrics every process wrote there (see :func:`make_collector`).
    ``registry`` replaces prometheus_client's default registry in single-process mode;
    ``created`` keeps the ``_created`` samples. Raise OSError when the address cannot be
    bound, ImproperlyConfigured for invalid labels or a missing multiprocess directory.
    """
    collector = make_collector(
        labels=labels, multiprocess_dir=multiprocess_dir, registry=registry, created=created
    )
    httpd = make_server(
        host,
        port,
        make_wsgi_app(collector),
        server_class=_server_class(host, port),
        handler_class=_QuietHandler,
    )
    thread = threading.Thread(
        target=httpd.serve_forever,
        kwargs={"poll_interval": 0.5},
        name="microframe-metrics",
        daemon=True,
    )
    thread.start()
    return MetricsServer(httpd, thread, host)


def mark_process_dead(pid: int, multiprocess_dir: str | None = None) -> None:
    """Forget the live gauges of the dead process ``pid`` in multiprocess mode.

    Counters and histograms of a dead process are kept (their totals must not go down); only
    the gauges in a ``live*`` multiprocess mode are removed. ``multiprocess_dir`` defaults to
    ``PROMETHEUS_MULTIPROC_DIR``.
    """
    import os

    from prometheus_client import multiprocess

    path = multiprocess_dir or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        multiprocess.mark_process_dead(pid, path)
