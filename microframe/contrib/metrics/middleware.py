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
in ``grpc_server_handling_seconds``, and counts the messages received and sent. A
server-streaming call ends when the method handler has written its last message (or the call
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
from microframe.contrib.metrics.metrics import client_metrics, server_metrics
from microframe.core.context import RequestContext
from microframe.core.exceptions import ImproperlyConfigured, MiddlewareNotUsed, RpcError
from microframe.core.exceptions import status_of as status_code_of
from microframe.core.middleware import Handler
from microframe.core.router import Route, RpcKind
from microframe.core.streams import CountedMessages

if TYPE_CHECKING:
    from microframe.client.call import ClientCall, ClientHandler

_perf_counter = time.perf_counter
_OK = grpc.StatusCode.OK

__all__ = ["MetricsMiddleware", "status_code_of"]


class MetricsMiddleware:
    """Record go-grpc-prometheus metrics for the RPC method this chain serves.

    Every label child is bound when the chain is built, so a call does no label lookup; the
    ``handled`` children of error codes are bound on their first use and kept.
    """

    __slots__ = (
        "next",
        "route",
        "_started",
        "_handled",
        "_handled_ok",
        "_handled_by_code",
        "_seconds",
        "_received",
        "_sent",
        "_label_values",
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
        metrics = server_metrics()
        values = (kind.grpc_type, route.service, route.method)
        self._label_values = values
        self._started = metrics.started.labels(*values)
        self._handled = metrics.handled
        self._handled_ok = metrics.handled.labels(*values, _OK.name)
        self._handled_by_code: dict[grpc.StatusCode, Any] = {_OK: self._handled_ok}
        self._seconds = metrics.handling_seconds.labels(*values)
        self._received = metrics.msg_received.labels(*values)
        self._sent = metrics.msg_sent.labels(*values)
        self._client_streaming = kind.client_streaming
        self._server_streaming = kind.server_streaming

    def handled_child(self, code: grpc.StatusCode) -> Any:
        """Return the ``grpc_server_handled_total`` child of ``code`` for this method."""
        child = self._handled_by_code.get(code)
        if child is None:
            child = self._handled.labels(*self._label_values, code.name)
            self._handled_by_code[code] = child
        return child

    def record(self, code: grpc.StatusCode, start: float) -> None:
        """Record the end of a call started at ``start`` (``time.perf_counter()``) with
        ``code``."""
        self._seconds.observe(_perf_counter() - start)
        self.handled_child(code).inc()

    async def __call__(self, ctx: RequestContext, request: Any) -> Any:
        self._started.inc()
        if self._client_streaming:
            request = CountedMessages(request, self._count_received)
        else:
            self._received.inc()
        start = _perf_counter()
        if self._server_streaming:
            # The method handler tells the end of the call, whatever ends it.
            ctx.on_end(lambda code, exc: self.record(code, start))
            return CountedMessages(await self.next(ctx, request), self._count_sent)
        try:
            response = await self.next(ctx, request)
        except BaseException as exc:
            self.record(status_code_of(exc, ctx.grpc), start)
            raise
        self._seconds.observe(_perf_counter() - start)
        self._handled_ok.inc()
        self._sent.inc()
        return response

    def request_failed(
        self, ctx: RequestContext, code: grpc.StatusCode, exc: BaseException
    ) -> None:
        """Count a call whose request could not be read (it ended before the chain) as a
        streaming call whose request fails is counted: started, and handled with ``code``."""
        self._started.inc()
        self.record(code, ctx.start)

    def _count_received(self, message: Any) -> None:
        self._received.inc()

    def _count_sent(self, message: Any) -> None:
        self._sent.inc()


class ClientMetricsMiddleware:
    """``grpc_client_*`` metrics (go-grpc-prometheus names) of the calls a client makes, per
    service and method: a step of ``CLIENT_MIDDLEWARE``, out of the chain when
    ``METRICS["ENABLED"]`` is false."""

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
        metrics = client_metrics()
        self._labels = (kind.grpc_type, service, name)
        self._started = metrics.started.labels(*self._labels)
        self._handled = metrics.handled
        self._seconds = metrics.handling_seconds.labels(*self._labels)
        self._sent = metrics.msg_sent.labels(*self._labels)
        self._received = metrics.msg_received.labels(*self._labels)
        self._streaming = kind.server_streaming
        self._one_request = not kind.client_streaming
        self._by_code: dict[grpc.StatusCode, Any] = {}

    async def __call__(self, call: ClientCall) -> Any:
        self._started.inc()
        if self._one_request:
            self._sent.inc()
        start = time.perf_counter()
        try:
            response = await self.next(call)
        except RpcError as err:
            self._finish(err.code, start)
            raise
        except BaseException:
            self._finish(grpc.StatusCode.UNKNOWN, start)
            raise
        if self._streaming:
            return self._count(response, start)
        self._received.inc()
        self._finish(grpc.StatusCode.OK, start)
        return response

    def _finish(self, code: grpc.StatusCode, start: float) -> None:
        self._seconds.observe(time.perf_counter() - start)
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code[code] = self._handled.labels(*self._labels, code.name)
        child.inc()

    async def _count(self, stream: AsyncIterator[Any], start: float) -> AsyncIterator[Any]:
        code = grpc.StatusCode.OK
        try:
            async for message in stream:
                self._received.inc()
                yield message
        except RpcError as err:
            code = err.code
            raise
        except BaseException:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            self._finish(code, start)
