"""The request context handed to middleware and controllers as ``ctx``.

It is also where middleware learns how a call ended: :meth:`RequestContext.on_end` registers a
callback the method handler calls once with the call's final status.
"""

from __future__ import annotations

import contextvars
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc
    import grpc.aio

    from microframe.core.exceptions import RpcError
    from microframe.core.router import Route

#: ``callback(code, exc)``: the call ended with ``code``; ``exc`` is the exception, if any.
OnEnd = Callable[["grpc.StatusCode", "BaseException | None"], Any]

#: Metadata keys a trace id is taken from when the caller sent one (first match wins).
TRACE_ID_KEYS = ("trace_id", "x-request-id")

_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "microframe_request_context", default=None
)

request_logger = logging.getLogger("microframe.request")


def current_context() -> RequestContext | None:
    """Return the context of the request being served by this task, if any."""
    return _current.get()


def new_trace_id() -> str:
    """Return a new random 128-bit trace id as 32 hex digits (the W3C/Jaeger width)."""
    return os.urandom(16).hex()


class RequestContext:
    """What a handler knows about the call it serves.

    Everything costly (metadata, peer, trace id, logger) is computed on first use, so a call
    pays only for what its middleware and controller read.
    """

    __slots__ = (
        "route",
        "grpc",
        "start",
        "span",
        "identity",
        "_metadata",
        "_peer",
        "_trace_id",
        "_logger",
        "_fields",
        "_ends",
        "_propagated",
        "_metadata_out",
        "__weakref__",
    )

    def __init__(self, route: Route, grpc_context: grpc.aio.ServicerContext) -> None:
        self.route = route
        #: The raw ``grpc.aio.ServicerContext`` (set trailers, read auth context...).
        self.grpc = grpc_context
        #: ``time.perf_counter()`` when the call reached the framework.
        self.start = time.perf_counter()
        #: The active tracing span (opentracing API) when tracing is on, else None.
        self.span: Any = None
        #: Who called, when the auth middleware identified the caller (else None).
        self.identity: str | None = None
        self._metadata: dict[str, str] | None = None
        self._peer: str | None = None
        self._trace_id: str | None = None
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None
        self._fields: dict[str, Any] | None = None
        self._ends: list[OnEnd] | None = None
        self._propagated: tuple[tuple[str, Any], ...] | None = None
        self._metadata_out: dict[str, Any] | None = None

    @property
    def service(self) -> str:
        return self.route.service

    @property
    def method(self) -> str:
        return self.route.method

    @property
    def full_method(self) -> str:
        return self.route.full_method

    @property
    def peer(self) -> str:
        """Return the caller's address as grpc reports it (``ipv4:127.0.0.1:5555``): it names
        the connection (address and port), and is the key of the per-connection limits."""
        if self._peer is None:
            self._peer = self.grpc.peer()
        return self._peer

    @property
    def metadata(self) -> dict[str, str]:
        """Return the incoming metadata as a dict (the last value of a repeated key wins)."""
        if self._metadata is None:
            self._metadata = {k: v for k, v in (self.grpc.invocation_metadata() or ())}
        return self._metadata

    @property
    def metadata_out(self) -> dict[str, Any]:
        """Metadata to send on every call this request makes through microframe's client (one
        hop; a key named ``x-md-global-*`` travels on from there): see
        :mod:`microframe.core.propagation`."""
        if self._metadata_out is None:
            self._metadata_out = {}
        return self._metadata_out

    @property
    def color(self) -> str | None:
        """The request's color (``x-md-global-color``: a canary's calls), or None."""
        from microframe.core.propagation import COLOR_KEY

        return self.metadata.get(COLOR_KEY) or None

    @property
    def stress(self) -> bool:
        """Whether the request is load-test traffic (``PROPAGATION["STRESS_KEY"]``, by default
        ``x-md-global-stress: 1``): a controller sends its writes to shadow tables."""
        from microframe.core.propagation import is_stress, stress_key

        return is_stress(self.metadata.get(stress_key()))

    def propagated(self) -> tuple[tuple[str, Any], ...]:
        """The metadata the calls made while serving this request carry: the ``x-md-global-*``
        keys received (within ``PROPAGATION``'s caps, worked out once), then
        :attr:`metadata_out`."""
        kept = self._propagated
        if kept is None:
            from microframe.core.propagation import global_metadata

            kept = self._propagated = global_metadata(self.metadata, self.full_method)
        if self._metadata_out:
            return kept + tuple(self._metadata_out.items())
        return kept

    def time_remaining(self) -> float | None:
        """Return the seconds left before the call's deadline, or None without a deadline.

        The deadline is the caller's, or, for a method ``GRPC["METHOD_TIMEOUTS"]`` caps, the
        earlier of the caller's and the cap (see :func:`capped_context`). The client library
        reads it here: a call made while serving never outlives it.
        """
        return self.grpc.time_remaining()

    @property
    def deadline(self) -> float | None:
        """Return the deadline (see :meth:`time_remaining`) as a ``time.monotonic()`` value,
        or None."""
        remaining = self.time_remaining()
        return None if remaining is None else time.monotonic() + remaining

    @property
    def trace_id(self) -> str:
        """Return the trace id: the caller's (``trace_id``/``x-request-id``) or a new one."""
        if self._trace_id is None:
            md = self.metadata
            for key in TRACE_ID_KEYS:
                value = md.get(key)
                if value:
                    self._trace_id = value[:128]
                    break
            else:
                self._trace_id = new_trace_id()
        return self._trace_id

    @trace_id.setter
    def trace_id(self, value: str) -> None:
        self._trace_id = value
        self._logger = None

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """Return a logger whose records carry this call's trace id, service and method."""
        if self._logger is None:
            self._logger = logging.LoggerAdapter(
                request_logger,
                {"trace_id": self.trace_id, "service": self.service, "method": self.method},
            )
        return self._logger

    def add_field(self, key: str, value: Any) -> None:
        """Add a field to this call's access-log line."""
        if self._fields is None:
            self._fields = {}
        self._fields[key] = value

    @property
    def fields(self) -> dict[str, Any]:
        """Return the fields added with :meth:`add_field`."""
        return self._fields if self._fields is not None else {}

    def on_end(self, callback: OnEnd) -> None:
        """Call ``callback(code, exc)`` once, when the call has ended.

        The method handler calls it with the status the call was answered with (and the
        exception that ended it, if any), after the reply or the last message of a stream
        was written, or the call failed, was cancelled, or its caller went away: a
        server-streaming call ends when its stream does, not when the controller returns it.
        A call cut by a stop is CANCELLED here (its task was cancelled; the caller is
        answered UNAVAILABLE). Callbacks run on the event loop, the last registered first,
        so the middleware outermost in the chain learns last, as on a unary call.
        """
        if self._ends is None:
            self._ends = [callback]
        else:
            self._ends.append(callback)

    def _ended(self, code: grpc.StatusCode, exc: BaseException | None) -> None:
        """Run the :meth:`on_end` callbacks (the method handler calls this once per call).

        A callback that raises is logged and the others still run: the call's answer is
        already decided, an observer's bug must not change it.
        """
        ends, self._ends = self._ends, None
        if ends is None:
            return
        for callback in reversed(ends):
            try:
                callback(code, exc)
            except Exception:
                self.logger.exception("%s: an end-of-call callback failed", self.full_method)

    def elapsed(self) -> float:
        """Return seconds since the call reached the framework."""
        return time.perf_counter() - self.start

    def __repr__(self) -> str:
        return f"<RequestContext {self.full_method}>"


def cap_exceeded(route: Route) -> RpcError:
    """Return the error a call of ``route`` is answered with once its time cap
    (``route.timeout``, from ``GRPC["METHOD_TIMEOUTS"]``) has passed."""
    from microframe.core.exceptions import DeadlineExceeded

    return DeadlineExceeded(
        f'{route.full_method} exceeded its {route.timeout:g} s limit (GRPC["METHOD_TIMEOUTS"])'
    )


_capped: dict[type[RequestContext], type[RequestContext]] = {}


def capped_context(base: type[RequestContext]) -> type[RequestContext]:
    """Return the request context class of a method with a time cap (``route.timeout``, from
    ``GRPC["METHOD_TIMEOUTS"]``) whose calls would otherwise be ``base`` objects.

    Its :meth:`~RequestContext.time_remaining` (and so ``deadline``) is the earlier of the
    caller's deadline and the cap, counted from the moment the call reached the framework
    (``ctx.start``). A streaming call's method handler sets ``_cap``, the method's
    :class:`~microframe.core.limits.MethodCap`: once it has cut the call, the call's end is
    told to the :meth:`~RequestContext.on_end` callbacks as DEADLINE_EXCEEDED, not as the
    cancellation that stopped the stream. Only capped methods use these classes: the other
    methods' contexts read their caller's deadline and nothing else. One class per ``base``,
    made once.
    """
    try:
        return _capped[base]
    except KeyError:
        pass
    import asyncio

    import grpc

    perf_counter = time.perf_counter
    current_task = asyncio.current_task
    cancelled = grpc.StatusCode.CANCELLED

    def time_remaining(self: Any) -> float | None:
        left = self.start + self.route.timeout - perf_counter()
        theirs = self.grpc.time_remaining()
        if theirs is not None and theirs < left:
            return theirs  # type: ignore[no-any-return]
        return left if left > 0.0 else 0.0

    def _ended(self: Any, code: grpc.StatusCode, exc: BaseException | None) -> None:
        cap = getattr(self, "_cap", None)
        if code is cancelled and cap is not None and cap.cut(current_task()):
            exc = cap_exceeded(self.route)
            code = exc.code
        base._ended(self, code, exc)

    time_remaining.__doc__ = RequestContext.time_remaining.__doc__
    capped: type[RequestContext] = type(
        f"Capped{base.__name__}",
        (base,),
        {
            "__slots__": ("_cap",),
            "__module__": base.__module__,
            "__doc__": f"{base.__name__} of a method with a time cap (:func:`capped_context`).",
            "time_remaining": time_remaining,
            "_ended": _ended,
        },
    )
    _capped[base] = capped
    return capped
