"""The server middleware chain: ``Middleware(next) -> handler``, built once per method.

A middleware is a factory called with the next handler that returns a handler. A handler is
``async (ctx, request) -> response``; for server-streaming RPCs the response is an async
iterator of messages, for client-streaming RPCs the request is one. Two equivalent forms::

    class Timing:
        def __init__(self, next):
            self.next = next

        async def __call__(self, ctx, request):
            try:
                return await self.next(ctx, request)
            finally:
                ctx.add_field("ms", round(ctx.elapsed() * 1000, 3))

    def timing(next):
        async def handler(ctx, request):
            return await next(ctx, request)
        return handler

A factory that accepts a ``route`` keyword receives the :class:`~microframe.core.router.Route`
it is built for, to do per-method work once (e.g. bind metric labels). Raising
:class:`~microframe.core.exceptions.MiddlewareNotUsed` from the factory takes it out of the
chain. Middleware that must see each streamed message wraps the iterators with
:func:`map_stream`; one that must see the end of a streamed call registers
:meth:`~microframe.core.context.RequestContext.on_end`.

A call whose one request message cannot be read (malformed, missing, too slow to arrive) ends
before the chain runs. A middleware that observes every call (counts, logs or traces it)
defines ``request_failed(ctx, code, exc)``, the :class:`RequestObserver` protocol: the method
handler calls it for such a call, so that it is seen as a streaming call whose request fails
inside the chain is.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import grpc

from microframe.core.context import RequestContext
from microframe.core.exceptions import ImproperlyConfigured, MiddlewareNotUsed
from microframe.core.router import Route
from microframe.utils.module_loading import import_string

Handler = Callable[[RequestContext, Any], Awaitable[Any]]
MiddlewareFactory = Callable[..., Handler]

_accepts_route_cache: dict[Any, bool] = {}


@runtime_checkable
class RequestObserver(Protocol):
    """A middleware that is told of the calls that ended before the chain ran."""

    def request_failed(
        self, ctx: RequestContext, code: grpc.StatusCode, exc: BaseException
    ) -> None:
        """The request message of the call ``ctx`` could not be read: the call was answered
        ``code`` because of ``exc`` (an :class:`~microframe.core.exceptions.RpcError`, or the
        cancellation of a caller that went away) without running the chain."""


def _accepts_route(factory: Any) -> bool:
    try:
        return _accepts_route_cache[factory]
    except (KeyError, TypeError):
        pass
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        accepts = False
    else:
        accepts = any(p.name == "route" or p.kind is p.VAR_KEYWORD for p in params)
    try:
        _accepts_route_cache[factory] = accepts
    except TypeError:
        pass
    return accepts


def resolve_middleware(entry: str | MiddlewareFactory) -> MiddlewareFactory:
    """Return the factory named by ``entry`` (a dotted path or the factory itself)."""
    if isinstance(entry, str):
        try:
            return import_string(entry)
        except ImportError as err:
            raise ImproperlyConfigured(f"Middleware {entry!r} cannot be imported: {err}") from err
    if not callable(entry):
        raise ImproperlyConfigured(f"Middleware {entry!r} is not a dotted path or a callable.")
    return entry


def build_chain(
    route: Route,
    terminal: Handler,
    middleware: Sequence[str | MiddlewareFactory],
    observers: list[RequestObserver] | None = None,
) -> tuple[Handler, list[str]]:
    """Wrap ``terminal`` in ``middleware`` (outermost first), then the route's own extras.

    Return the chain and the names of the middleware in use (outermost first). The
    middleware built that are :class:`RequestObserver` are appended to ``observers`` when it
    is given (outermost first), for :func:`microframe.core.handlers.grpc_method_handler`.
    """
    found: list[RequestObserver] = []
    handler = terminal
    used: list[str] = []
    for entry in reversed([*middleware, *route.middleware]):
        factory = resolve_middleware(entry)
        try:
            if _accepts_route(factory):
                built = factory(handler, route=route)
            else:
                built = factory(handler)
        except MiddlewareNotUsed:
            continue
        if built is None or not callable(built):
            raise ImproperlyConfigured(f"Middleware {entry!r} returned {built!r}, not a handler.")
        handler = built
        if observers is not None and isinstance(built, RequestObserver):
            found.append(built)
        used.append(
            entry if isinstance(entry, str) else getattr(entry, "__qualname__", repr(entry))
        )
    used.reverse()
    if observers is not None:
        observers.extend(reversed(found))
    return handler, used


async def map_stream(
    stream: AsyncIterator[Any], on_message: Callable[[Any], Any]
) -> AsyncIterator[Any]:
    """Yield every message of ``stream`` after calling ``on_message`` with it."""
    async for message in stream:
        on_message(message)
        yield message
