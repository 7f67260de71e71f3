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
background thread with an event loop of its own (never the server's), and bounds what a
connection may cost (see :class:`MetricsServer`).

The constant labels are added to every sample when it is collected, so recording a metric
costs nothing more for them.
"""

from __future__ import annotations

import asyncio
import copy
import io
import logging
import re
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client import make_wsgi_app as make_prometheus_app
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector

from microframe.core.exceptions import ImproperlyConfigured
from microframe.utils.timeouts import with_timeout

logger = logging.getLogger("microframe.metrics")

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


class MetricsServer:
    """The running HTTP endpoint: ``host``, ``port`` (the port bound) and :meth:`close`.

    One thread runs an event loop that reads each request (its head: at most
    :data:`MAX_HEAD_BYTES`, within :data:`READ_TIMEOUT` seconds), answers it from the WSGI
    application and closes the connection; a client that does not read the answer within
    :data:`WRITE_TIMEOUT` seconds is dropped, and at most :data:`MAX_CONNECTIONS` connections
    are kept at once (past it, the one silent for longest is closed to make room: a scraper
    sends its request at once). So idle or slow connections cost a few
    kilobytes each, never a thread: the standard library's servers (and prometheus_client's)
    give every connection a thread of its own with no time limit, which is why this one is
    written here. Prometheus opens one connection per scrape.
    """

    def __init__(self, app: WSGIApp, sock: socket.socket, host: str) -> None:
        self.app = app
        self.host = host
        self.port: int = sock.getsockname()[1]
        self.connections = 0
        #: Connections whose request has not arrived yet, oldest first.
        self._waiting: dict[asyncio.BaseTransport, None] = {}
        self._sock = sock
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._closed = False
        ready = threading.Event()
        self.thread = threading.Thread(
            target=self._run, args=(ready,), name="microframe-metrics", daemon=True
        )
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(
                self._serve, sock=self._sock, limit=MAX_HEAD_BYTES
            )

        self._loop.run_until_complete(start())
        ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= MAX_CONNECTIONS:
            if not self._waiting:  # every one is being answered
                writer.transport.abort()
                return
            oldest = next(iter(self._waiting))  # the longest silent: not a scraper
            del self._waiting[oldest]
            oldest.abort()
        self.connections += 1
        transport = writer.transport
        self._waiting[transport] = None
        try:
            try:
                head = await with_timeout(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
                self._waiting.pop(transport, None)
                status, headers, body, length = self._answer(head)
            except (asyncio.LimitOverrunError, ValueError):
                status, headers = "431 Request Header Fields Too Large", []
                body = b"request head too large\n"
                length = len(body)
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                return
            except Exception:  # a collector failed (a multiprocess file unreadable...)
                logger.exception("metrics: the scrape failed")
                status, headers = "500 Internal Server Error", []
                body = b"the metrics could not be collected\n"
                length = len(body)
            lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers),
                     f"Content-Length: {length}", "Connection: close", "", ""]
            writer.write("\r\n".join(lines).encode("latin-1") + body)
            await with_timeout(writer.drain(), WRITE_TIMEOUT)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            self.connections -= 1
            self._waiting.pop(transport, None)
            if transport.get_write_buffer_size():
                transport.abort()
            else:
                transport.close()

    def _answer(self, head: bytes) -> tuple[str, list[tuple[str, str]], bytes, int]:
        """Run the WSGI application for the request whose head is ``head``: the status, the
        headers, the body to send and its full length (a HEAD answer sends none of it)."""
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return "400 Bad Request", [], b"bad request\n", 12
        method, target, protocol = parts
        path, _, query = target.partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "SERVER_PROTOCOL": protocol,
            "SCRIPT_NAME": "",
            "SERVER_NAME": self.host,
            "SERVER_PORT": str(self.port),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr, "wsgi.version": (1, 0),
            "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False,
        }
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep and "_" not in name:
                environ["HTTP_" + name.strip().upper().replace("-", "_")] = value.strip()
        answer: dict[str, Any] = {}

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            answer["status"], answer["headers"] = status, headers
            return lambda data: None

        result = self.app(environ, start_response)
        try:
            body = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        headers = [
            (k, v) for k, v in answer["headers"]
            if k.lower() not in ("content-length", "connection")
        ]
        return answer["status"], headers, b"" if method == "HEAD" else body, len(body)

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

        def stop() -> None:
            if self._server is not None:
                self._server.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(stop)
        self.thread.join(5)
        self._sock.close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url}>"


#: Limits of the metrics endpoint (see :class:`MetricsServer`).
MAX_CONNECTIONS = 64
MAX_HEAD_BYTES = 8192
READ_TIMEOUT = 5.0
WRITE_TIMEOUT = 10.0
#: Connections the kernel queues before the loop accepts them. A burst of connections (a
#: thousand idle ones opened at once) fills a short queue while the loop is busy evicting, and
#: the kernel then drops the next SYN: the scraper's connection waits for its retransmission,
#: a second later. The kernel caps it at ``net.core.somaxconn`` (4096 on current Linux).
BACKLOG = 1024


def _listen(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as err:
        raise OSError(f"cannot resolve {host!r}: {err}") from err
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


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
    return MetricsServer(make_wsgi_app(collector), _listen(host, port), host)


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
