"""``MetricsMiddleware``: count and time every RPC the server handles (and
``ClientMetricsMiddleware``, every call a client makes: ``grpc_client_*``).

Put it first in ``MIDDLEWARE`` (it is there by default) so that it sees every call, including
the ones the middleware after it refuse::

    MIDDLEWARE = [
        "microframe.contrib.metrics.middleware.MetricsMiddleware",
        ...
    ]

Set ``METRICS["ENABLED"] = False`` to take it out of the chain.

For each call it increments ``grpc_server_started_total`` when the call starts and
``grpc_server_handled_total`` with the status code when it ends, observes the call's duration
in ``grpc_server_handling_seconds``, and counts the messages received and sent (with
``METRICS["COLORS"]``, under the call's color label: :mod:`microframe.contrib.metrics.metrics`).
A server-streaming call ends when the method handler has written its last message (or the call
failed, or the caller went away), not when the controller returns the stream: it is recorded
from the call's ``ctx.on_end`` callback. A call whose request message cannot be read (malformed,
missing, too slow) is counted too, started and handled with the code it was answered, whatever
its kind (``request_failed``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from microframe.conf import dict_setting, settings
from microframe.contrib.metrics.metrics import GrpcMetrics, client_metrics, server_metrics
from microframe.core.context import RequestContext
from microframe.core.exceptions import ImproperlyConfigured, MiddlewareNotUsed, RpcError
from microframe.core.exceptions import status_of as status_code_of
from microframe.core.middleware import Handler
from microframe.core.propagation import COLOR_KEY, steering
from microframe.core.router import Route, RpcKind
from microframe.core.streams import CountedMessages

if TYPE_CHECKING:
    from microframe.client.call import ClientCall, ClientHandler

_perf_counter = time.perf_counter
_OK = grpc.StatusCode.OK

__all__ = ["MetricsMiddleware", "status_code_of"]


class _MethodMetrics:
    """The label children of one method (and one color label) of one side's metrics: bound
    once, so that a call does no label lookup; the ``handled`` children of error codes are
    bound on their first use and kept."""

    __slots__ = ("values", "started", "handled", "handled_ok", "by_code", "seconds", "received",
                 "sent", "_color")

    def __init__(self, metrics: GrpcMetrics, values: tuple[str, ...], color: tuple[str, ...]):
        #: The label values but the code: (type, service, method) and the color label if any.
        self.values = values
        self.started = metrics.started.labels(*values, *color)
        self.handled = metrics.handled
        self.handled_ok = metrics.handled.labels(*values, _OK.name, *color)
        self.by_code: dict[grpc.StatusCode, Any] = {_OK: self.handled_ok}
        self.seconds = metrics.handling_seconds.labels(*values, *color)
        self.received = metrics.msg_received.labels(*values, *color)
        self.sent = metrics.msg_sent.labels(*values, *color)
        self._color = color

    def handled_child(self, code: grpc.StatusCode) -> Any:
        child = self.by_code.get(code)
        if child is None:
            child = self.by_code[code] = self.handled.labels(*self.values, code.name, *self._color)
        return child

    def record(self, code: grpc.StatusCode, start: float) -> None:
        """The end of a call started at ``start`` (``time.perf_counter()``) with ``code``."""
        self.seconds.observe(_perf_counter() - start)
        self.handled_child(code).inc()


def _method_metrics(
    metrics: GrpcMetrics, values: tuple[str, str, str]
) -> tuple[_MethodMetrics, dict[str, _MethodMetrics] | None]:
    """The children of a method, and with ``METRICS["COLORS"]`` those of each color label
    (every value the label takes, bound at once: a caller's color picks one of them)."""
    if not metrics.colors:
        return _MethodMetrics(metrics, values, ()), None
    by_label = {label: _MethodMetrics(metrics, values, (label,))
                for label in metrics.color_labels()}
    return by_label[""], by_label


class MetricsMiddleware:
    """Record go-grpc-prometheus metrics for the RPC method this chain serves.

    Every label child is bound when the chain is built, so a call does no label lookup (with
    ``METRICS["COLORS"]``, one dictionary lookup of its color label).
    """

    __slots__ = (
        "next",
        "route",
        "_plain",
        "_by_label",
        "_metrics",
        "_client_streaming",
        "_server_streaming",
    )

    def __init__(self, next: Handler, route: Route | None = None) -> None:
        if not settings.METRICS.get("ENABLED", True):
            raise MiddlewareNotUsed
        if route is None:
            raise ImproperlyConfigured(
                "MetricsMiddleware needs the route it serves: build the chain with "
                "microframe.core.middleware.build_chain."
            )
        self.next = next
        self.route = route
        kind = route.kind
        self._metrics = metrics = server_metrics()
        self._plain, self._by_label = _method_metrics(
            metrics, (kind.grpc_type, route.service, route.method)
        )
        self._client_streaming = kind.client_streaming
        self._server_streaming = kind.server_streaming

    def handled_child(self, code: grpc.StatusCode) -> Any:
        """Return the ``grpc_server_handled_total`` child of ``code`` for this method (of the
        uncolored calls, with colors)."""
        return self._plain.handled_child(code)

    def _children(self, ctx: RequestContext) -> _MethodMetrics:
        by_label = self._by_label
        if by_label is None:
            return self._plain
        return by_label[self._metrics.color_label(ctx.metadata.get(COLOR_KEY))]

    async def __call__(self, ctx: RequestContext, request: Any) -> Any:
        m = self._plain if self._by_label is None else self._children(ctx)
        m.started.inc()
        if self._client_streaming:
            request = CountedMessages(request, lambda message: m.received.inc())
        else:
            m.received.inc()
        start = _perf_counter()
        if self._server_streaming:
            # The method handler tells the end of the call, whatever ends it.
            ctx.on_end(lambda code, exc: m.record(code, start))
            return CountedMessages(await self.next(ctx, request), lambda message: m.sent.inc())
        try:
            response = await self.next(ctx, request)
        except BaseException as exc:
            m.record(status_code_of(exc, ctx.grpc), start)
            raise
        m.seconds.observe(_perf_counter() - start)
        m.handled_ok.inc()
        m.sent.inc()
        return response

    def request_failed(
        self, ctx: RequestContext, code: grpc.StatusCode, exc: BaseException
    ) -> None:
        """Count a call whose request could not be read (it ended before the chain) as a
        streaming call whose request fails is counted: started, and handled with ``code``."""
        m = self._children(ctx)
        m.started.inc()
        m.record(code, ctx.start)


class ClientMetricsMiddleware:
    """``grpc_client_*`` metrics (go-grpc-prometheus names) of the calls a client makes, per
    service and method (and call color, with ``METRICS["COLORS"]``): a step of
    ``CLIENT_MIDDLEWARE``, out of the chain when ``METRICS["ENABLED"]`` is false."""

    def __init__(
        self, next: ClientHandler, *, method: str, kind: RpcKind, **kwargs: Any
    ) -> None:
        try:
            enabled = dict_setting("METRICS")["ENABLED"]
        except ImproperlyConfigured:
            enabled = True
        if not enabled:
            raise MiddlewareNotUsed
        self.next = next
        service, _, name = method.lstrip("/").rpartition("/")
        self._metrics = metrics = client_metrics()
        self._plain, self._by_label = _method_metrics(metrics, (kind.grpc_type, service, name))
        self._streaming = kind.server_streaming
        self._one_request = not kind.client_streaming

    async def __call__(self, call: ClientCall) -> Any:
        m = self._plain
        if self._by_label is not None:
            color, _ = steering(call.metadata)  # the last one, as discovery routes it
            m = self._by_label[self._metrics.color_label(color)]
        m.started.inc()
        if self._one_request:
            m.sent.inc()
        start = time.perf_counter()
        try:
            response = await self.next(call)
        except RpcError as err:
            m.record(err.code, start)
            raise
        except BaseException:
            m.record(grpc.StatusCode.UNKNOWN, start)
            raise
        if self._streaming:
            return self._count(m, response, start)
        m.received.inc()
        m.record(grpc.StatusCode.OK, start)
        return response

    async def _count(
        self, m: _MethodMetrics, stream: AsyncIterator[Any], start: float
    ) -> AsyncIterator[Any]:
        code = grpc.StatusCode.OK
        try:
            async for message in stream:
                m.received.inc()
                yield message
        except RpcError as err:
            code = err.code
            raise
        except BaseException:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            m.record(code, start)
