"""The gRPC metrics, named and labelled as go-grpc-prometheus names them.

Existing Grafana dashboards for go-grpc-prometheus work unchanged. Two families exist, each
made of five metrics:

- server: ``grpc_server_started_total``, ``grpc_server_handled_total``,
  ``grpc_server_handling_seconds``, ``grpc_server_msg_received_total``,
  ``grpc_server_msg_sent_total``;
- client: the same names with ``grpc_client_`` in place of ``grpc_server_``.

Every metric carries the labels ``grpc_type`` (``unary``, ``client_stream``, ``server_stream``,
``bidi_stream``), ``grpc_service`` (``package.Service``) and ``grpc_method``; the ``handled``
counters add ``grpc_code``, the status code name (``OK``, ``NOT_FOUND``...).

With ``METRICS["COLORS"]`` (say ``["canary", "shadow"]``) every one of them has a label
``color`` more, last: the call's color (``x-md-global-color``) when it is one of those,
``other`` for any other color and ``""`` for a call without one. Off by default: each color
multiplies the series, and the callers choose the colors, so only the listed ones are counted
apart.

The metric objects are created once per process, on first use (the first
:class:`~microframe.contrib.metrics.middleware.MetricsMiddleware` built, or the first call of
:func:`server_metrics`/:func:`client_metrics`), in prometheus_client's default registry. The
histogram buckets and the colors are read from ``METRICS["BUCKETS"]`` and ``["COLORS"]`` at
that moment; changing them later has no effect on a running process.

They hold only counters and histograms, so they work as they are in prometheus_client's
multiprocess mode: set ``PROMETHEUS_MULTIPROC_DIR`` in the environment before the process
imports ``prometheus_client`` (``runserver --workers N`` does it for its workers) and every
process writes its values to that directory, which one collector aggregates (see
:func:`microframe.contrib.metrics.exposition.start_http_server`).

The objects are also reachable as module attributes named like the samples they export::

    from microframe.contrib.metrics import metrics

    metrics.grpc_server_started_total.labels("unary", "helloworld.Greeter", "SayHello").inc()
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any, NamedTuple

from prometheus_client import REGISTRY, Counter, Histogram

from microframe.core.exceptions import ImproperlyConfigured

#: Labels of every gRPC metric, in the order ``.labels()`` takes them.
LABELS = ("grpc_type", "grpc_service", "grpc_method")
#: Labels of the ``handled`` counters.
HANDLED_LABELS = (*LABELS, "grpc_code")
#: The label of the call's color, with ``METRICS["COLORS"]``.
COLOR_LABEL = "color"
#: Its value for a color not in ``METRICS["COLORS"]``.
OTHER_COLOR = "other"

#: Buckets used when the settings give none (Prometheus' default buckets, as go-grpc-prometheus).
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class GrpcMetrics(NamedTuple):
    """The five metrics of one side (server or client) of a gRPC call."""

    #: Counter: RPCs started.
    started: Counter
    #: Counter: RPCs completed, whatever their status (extra label ``grpc_code``).
    handled: Counter
    #: Histogram: seconds from the start of an RPC to its completion.
    handling_seconds: Histogram
    #: Counter: messages received (requests on the server, responses on the client).
    msg_received: Counter
    #: Counter: messages sent (responses on the server, requests on the client).
    msg_sent: Counter
    #: The colors counted apart (``METRICS["COLORS"]``); empty: no ``color`` label.
    colors: frozenset[str] = frozenset()

    def color_label(self, color: str | None) -> str:
        """The ``color`` label of a call of ``color``: itself when it is one of
        :attr:`colors`, ``other`` for another, ``""`` for none."""
        if not color:
            return ""
        return color if color in self.colors else OTHER_COLOR

    def color_labels(self) -> tuple[str, ...]:
        """Every value the ``color`` label takes (none without colors)."""
        return ("", *sorted(self.colors), OTHER_COLOR) if self.colors else ()


_lock = threading.Lock()

_SERVER_HELP = {
    "started": "Total number of RPCs started on the server.",
    "handled": "Total number of RPCs completed on the server, regardless of success or failure.",
    "handling_seconds": (
        "Histogram of response latency (seconds) of gRPC that had been application-level "
        "handled by the server."
    ),
    "msg_received": "Total number of RPC stream messages received on the server.",
    "msg_sent": "Total number of gRPC stream messages sent by the server.",
}

_CLIENT_HELP = {
    "started": "Total number of RPCs started on the client.",
    "handled": "Total number of RPCs completed by the client, regardless of success or failure.",
    "handling_seconds": (
        "Histogram of response latency (seconds) of the gRPC until it is finished by the "
        "application."
    ),
    "msg_received": "Total number of RPC stream messages received by the client.",
    "msg_sent": "Total number of gRPC stream messages sent by the client.",
}


def configured_buckets() -> tuple[float, ...]:
    """Return the histogram buckets of ``METRICS["BUCKETS"]``, or :data:`DEFAULT_BUCKETS`.

    The defaults serve when the setting is missing or the settings are not configured (a
    script using only the client library).
    """
    from microframe.conf import settings

    try:
        buckets = settings.METRICS.get("BUCKETS")
    except ImproperlyConfigured:
        return DEFAULT_BUCKETS
    return _validated_buckets(buckets) if buckets else DEFAULT_BUCKETS


def configured_colors() -> frozenset[str]:
    """The colors of ``METRICS["COLORS"]`` (none when the settings are not configured)."""
    from microframe.conf import dict_setting

    try:
        colors = dict_setting("METRICS")["COLORS"]
    except ImproperlyConfigured:
        return frozenset()
    return frozenset(str(c) for c in colors or ())


def _validated_buckets(buckets: Iterable[Any]) -> tuple[float, ...]:
    try:
        values = tuple(float(b) for b in buckets)
    except (TypeError, ValueError) as err:
        raise ImproperlyConfigured(
            f'METRICS["BUCKETS"] must be a sequence of numbers, not {buckets!r}.'
        ) from err
    if any(b >= a for b, a in zip(values, values[1:], strict=False)):
        raise ImproperlyConfigured(f'METRICS["BUCKETS"] must be in increasing order: {buckets!r}.')
    return values


def _build(
    side: str, help_texts: dict[str, str], buckets: tuple[float, ...], colors: frozenset[str]
) -> GrpcMetrics:
    prefix = f"grpc_{side}"
    more = (COLOR_LABEL,) if colors else ()
    labels = (*LABELS, *more)
    return GrpcMetrics(
        started=Counter(f"{prefix}_started", help_texts["started"], labels, registry=REGISTRY),
        handled=Counter(
            f"{prefix}_handled", help_texts["handled"], (*HANDLED_LABELS, *more),
            registry=REGISTRY,
        ),
        handling_seconds=Histogram(
            f"{prefix}_handling_seconds",
            help_texts["handling_seconds"],
            labels,
            buckets=buckets,
            registry=REGISTRY,
        ),
        msg_received=Counter(
            f"{prefix}_msg_received", help_texts["msg_received"], labels, registry=REGISTRY
        ),
        msg_sent=Counter(f"{prefix}_msg_sent", help_texts["msg_sent"], labels, registry=REGISTRY),
        colors=colors,
    )


_HELP = {"server": _SERVER_HELP, "client": _CLIENT_HELP}
_built: dict[str, GrpcMetrics] = {}


def _side(side: str, buckets: Iterable[float] | None) -> GrpcMetrics:
    metrics = _built.get(side)
    if metrics is None:
        with _lock:
            metrics = _built.get(side)
            if metrics is None:
                if buckets is not None:
                    chosen = _validated_buckets(buckets)
                else:
                    chosen = configured_buckets()
                metrics = _built[side] = _build(side, _HELP[side], chosen, configured_colors())
    return metrics


def server_metrics(buckets: Iterable[float] | None = None) -> GrpcMetrics:
    """Return the ``grpc_server_*`` metrics, creating them on the first call.

    ``buckets`` (default: ``METRICS["BUCKETS"]``) is used only by the call that creates them.
    """
    return _side("server", buckets)


def client_metrics(buckets: Iterable[float] | None = None) -> GrpcMetrics:
    """Return the ``grpc_client_*`` metrics, creating them on the first call.

    ``buckets`` (default: ``METRICS["BUCKETS"]``) is used only by the call that creates them.
    """
    return _side("client", buckets)


_ATTRIBUTES = {
    "grpc_server_started_total": (server_metrics, "started"),
    "grpc_server_handled_total": (server_metrics, "handled"),
    "grpc_server_handling_seconds": (server_metrics, "handling_seconds"),
    "grpc_server_msg_received_total": (server_metrics, "msg_received"),
    "grpc_server_msg_sent_total": (server_metrics, "msg_sent"),
    "grpc_client_started_total": (client_metrics, "started"),
    "grpc_client_handled_total": (client_metrics, "handled"),
    "grpc_client_handling_seconds": (client_metrics, "handling_seconds"),
    "grpc_client_msg_received_total": (client_metrics, "msg_received"),
    "grpc_client_msg_sent_total": (client_metrics, "msg_sent"),
}


def __getattr__(name: str) -> Any:
    """Return a metric object by the name of its samples (creating the family if needed)."""
    try:
        family, field = _ATTRIBUTES[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    return getattr(family(), field)


def __dir__() -> list[str]:
    return sorted([*globals(), *_ATTRIBUTES])
