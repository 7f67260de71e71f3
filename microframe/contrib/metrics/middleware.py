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
server-streaming call ends when its response stream ends (exhausted, failed, or abandoned
because the caller went away), not when the controller returns the stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio

from microframe.conf import settings
from microframe.contrib.metrics.metrics import server_metrics
from microframe.core.context import RequestContext
from microframe.core.exceptions import ImproperlyConfigured, MiddlewareNotUsed
from microframe.core.handlers import status_of
from microframe.core.middleware import Handler
from microframe.core.router import Route

_perf_counter = time.perf_counter
_get_running_loop = asyncio.get_running_loop
_AbortError = grpc.aio.AbortError
_OK = grpc.StatusCode.OK
_CANCELLED = grpc.StatusCode.CANCELLED
_UNKNOWN = grpc.StatusCode.UNKNOWN
_CODES_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


def status_code_of(exc: BaseException, grpc_context: Any = None) -> grpc.StatusCode:
    """Return the status code a call failing with ``exc`` is answered with.

    A ``grpc.aio.AbortError`` (raised by ``context.abort()``) carries no code: it is read from
    ``grpc_context`` (the ``grpc.aio.ServicerContext``) when given, else UNKNOWN. Anything
    else is mapped by :func:`microframe.core.handlers.status_of`.
    """
    if isinstance(exc, _AbortError):
        if grpc_context is None:
            return _UNKNOWN
        try:
            code = grpc_context.code()
        except Exception:
            return _UNKNOWN
        if isinstance(code, grpc.StatusCode):
            return code
        if isinstance(code, int):
            return _CODES_BY_VALUE.get(code, _UNKNOWN)
        return _UNKNOWN
    return status_of(exc)


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
        """Record the end of a call started at ``start`` (``time.perf_counter()``) with ``code``."""
        self._seconds.observe(_perf_counter() - start)
        self.handled_child(code).inc()

    async def __call__(self, ctx: RequestContext, request: Any) -> Any:
        self._started.inc()
        if self._client_streaming:
            request = _CountedRequests(request, self._received)
        else:
            self._received.inc()
        start = _perf_counter()
        try:
            response = await self.next(ctx, request)
        except BaseException as exc:
            self.record(status_code_of(exc, ctx.grpc), start)
            raise
        if self._server_streaming:
            return _CountedResponses(self, response, ctx, start)
        self._seconds.observe(_perf_counter() - start)
        self._handled_ok.inc()
        self._sent.inc()
        return response


class _CountedRequests:
    """The request stream of a client-streaming call, counting every message received."""

    __slots__ = ("_stream", "_received")

    def __init__(self, stream: Any, received: Any) -> None:
        self._stream = stream.__aiter__()
        self._received = received

    def __aiter__(self) -> _CountedRequests:
        return self

    async def __anext__(self) -> Any:
        message = await self._stream.__anext__()
        self._received.inc()
        return message

    async def aclose(self) -> None:
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            await aclose()


class _CountedResponses:
    """The response stream of a server-streaming call.

    Count every message sent, and record the call as handled when the stream ends: OK when
    it is exhausted, the exception's code when it fails, CANCELLED when it is closed or
    dropped before its end (the caller went away).
    """

    __slots__ = ("_stream", "_middleware", "_ctx", "_start", "_sent", "_done", "_loop")

    def __init__(
        self, middleware: MetricsMiddleware, stream: Any, ctx: RequestContext, start: float
    ) -> None:
        self._middleware = middleware
        self._ctx = ctx
        self._start = start
        self._sent = middleware._sent
        self._done = False
        self._loop = _get_running_loop()
        try:
            self._stream: AsyncIterator[Any] = stream.__aiter__()
        except BaseException as exc:
            self._finish(status_code_of(exc, ctx.grpc))
            raise

    def _finish(self, code: grpc.StatusCode) -> None:
        if not self._done:
            self._done = True
            self._middleware.record(code, self._start)

    def __aiter__(self) -> _CountedResponses:
        return self

    async def __anext__(self) -> Any:
        try:
            message = await self._stream.__anext__()
        except StopAsyncIteration:
            self._finish(_OK)
            raise
        except BaseException as exc:
            self._finish(status_code_of(exc, self._ctx.grpc))
            raise
        self._sent.inc()
        return message

    async def aclose(self) -> None:
        self._finish(_CANCELLED)
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            await aclose()

    def __del__(self) -> None:
        # Dropped before its end. The garbage collector may run this while a metric's lock is
        # held by the same thread, so the recording is left to the event loop (as asyncio
        # does to finalize async generators).
        if not self._done:
            self._done = True
            try:
                self._loop.call_soon_threadsafe(self._middleware.record, _CANCELLED, self._start)
            except Exception:  # the loop is closed: nothing is left to record into
                pass
