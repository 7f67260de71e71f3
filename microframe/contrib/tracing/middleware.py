"""``TracingMiddleware`` (server) and ``ClientTracingMiddleware`` (client chain).

Both take themselves out of their chain when ``TRACING["ENABLED"]`` is false, so tracing that
is off costs nothing. Span tags follow the opentracing conventions: ``span.kind``,
``component`` (``grpc``), ``rpc.service``, ``rpc.method``, ``peer.address``, ``peer.service``
(client), ``grpc.status_code``, and ``error`` with the exception logged on the span
(``error.kind``, ``error.object``, ``message``) when the call failed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from microframe.core.context import RequestContext, current_context
from microframe.core.exceptions import MiddlewareNotUsed, RpcError, status_of
from microframe.core.middleware import Handler
from microframe.core.router import Route

_OK = grpc.StatusCode.OK

#: Codes that mark a server span as an error (the server's fault, as OpenTelemetry's gRPC
#: conventions say); on the client, every code but OK does.
SERVER_ERRORS = frozenset({
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
})


def _tracing() -> Any:
    from microframe.contrib.tracing import get_tracing

    tracing = get_tracing()
    if tracing is None:
        raise MiddlewareNotUsed
    return tracing


def finish_span(
    tracing: Any, span: Any, code: grpc.StatusCode, exc: BaseException | None, is_error: bool
) -> None:
    """Tag ``span`` with the call's status code (and error) and finish it."""
    span.set_tag("grpc.status_code", code.name)
    if is_error:
        span.set_tag("error", True)
        if exc is not None:
            tracing.record_error(span, exc)
    span.finish()


class TracingMiddleware:
    """A server span per RPC, child of the caller's span; ``ctx.span`` and ``ctx.trace_id``."""

    __slots__ = ("next", "tracing", "operation", "tags", "server_streaming")

    def __init__(self, next: Handler, route: Route | None = None) -> None:
        self.tracing = _tracing()
        self.next = next
        self.operation = route.full_method if route is not None else "grpc"
        self.tags = {"span.kind": "server", "component": "grpc"}
        if route is not None:
            self.tags.update({"rpc.service": route.service, "rpc.method": route.method})
        self.server_streaming = bool(route and route.kind.server_streaming)

    def start(self, ctx: RequestContext) -> Any:
        """Start the span of the call ``ctx``, make it ``ctx.span``; return it."""
        tracing = self.tracing
        span = tracing.start_span(self.operation, tracing.extract(ctx.metadata), self.tags)
        ctx.span = span
        ctx.trace_id = tracing.trace_id(span)
        if tracing.is_recording(span):
            try:
                span.set_tag("peer.address", ctx.peer)
            except Exception:
                pass
        return span

    def request_failed(
        self, ctx: RequestContext, code: grpc.StatusCode, exc: BaseException
    ) -> None:
        """Trace a call whose request could not be read (it ended before the chain): a span
        of its own, finished at once with ``code``."""
        finish_span(self.tracing, self.start(ctx), code, exc, code in SERVER_ERRORS)

    async def __call__(self, ctx: RequestContext, request: Any) -> Any:
        tracing = self.tracing
        span = self.start(ctx)
        if self.server_streaming:
            # Finished when the method handler says the call ended, whatever ends it.
            ctx.on_end(
                lambda code, exc: finish_span(tracing, span, code, exc, code in SERVER_ERRORS)
            )
            return await self.next(ctx, request)
        try:
            response = await self.next(ctx, request)
        except BaseException as exc:
            code = status_of(exc, ctx.grpc)
            finish_span(tracing, span, code, exc, code in SERVER_ERRORS)
            raise
        finish_span(tracing, span, _OK, None, False)
        return response


class ClientTracingMiddleware:
    """A client span per call made with the client library, child of the span of the request
    being served (when there is one); its context goes in the call's metadata."""

    def __init__(
        self, next: Any, *, service: str, method: str, kind: Any, **kwargs: Any
    ) -> None:
        self.tracing = _tracing()
        self.next = next
        self.operation = method
        proto_service, _, name = method.lstrip("/").rpartition("/")
        self.tags = {
            "span.kind": "client",
            "component": "grpc",
            "rpc.service": proto_service,
            "rpc.method": name,
            "peer.service": service,  # the registered name called
        }
        self.server_streaming = kind.server_streaming

    async def __call__(self, call: Any) -> Any:
        ctx = current_context()
        parent = ctx.span if ctx is not None else None
        parent_context = parent.context if parent is not None else None
        span = self.tracing.start_span(self.operation, parent_context, self.tags)
        self.tracing.inject(span, call.metadata)
        try:
            response = await self.next(call)
        except RpcError as err:
            self._finish(span, call, err.code, err)
            raise
        except BaseException as exc:
            self._finish(span, call, grpc.StatusCode.UNKNOWN, exc)
            raise
        if self.server_streaming:
            return self._stream(span, call, response)
        self._finish(span, call, _OK, None)
        return response

    def _finish(
        self, span: Any, call: Any, code: grpc.StatusCode, exc: BaseException | None
    ) -> None:
        if call.instance is not None:
            span.set_tag("peer.address", call.instance.address)
        if call.attempt > 1:
            span.set_tag("attempts", call.attempt)
        finish_span(self.tracing, span, code, exc, code is not _OK)

    async def _stream(self, span: Any, call: Any, stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        code, error = _OK, None  # type: grpc.StatusCode, BaseException | None
        try:
            async for message in stream:
                yield message
        except RpcError as err:
            code, error = err.code, err
            raise
        except BaseException as exc:
            code, error = grpc.StatusCode.CANCELLED, exc
            raise
        finally:
            self._finish(span, call, code, error)
