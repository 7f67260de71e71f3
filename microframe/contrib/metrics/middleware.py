"""``MetricsMiddleware``: count and time every RPC the server handles.

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
from typing import Any

import grpc

from microframe.conf import settings
from microframe.contrib.metrics.metrics import server_metrics
from microframe.core.context import RequestContext
from microframe.core.exceptions import ImproperlyConfigured, MiddlewareNotUsed
from microframe.core.exceptions import status_of as status_code_of
from microframe.core.middleware import Handler
from microframe.core.router import Route
from microframe.core.streams import CountedMessages

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
