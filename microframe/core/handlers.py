"""Turn routes into grpc method handlers: parsing, the chain, the controller, status codes.

The framework parses and serializes messages itself (grpc is given raw bytes) so that a
malformed request is answered INVALID_ARGUMENT with a clear message, and a controller that
returns the wrong type is answered INTERNAL, instead of grpc's generic failures.

Every RPC kind is served by one loop (:func:`grpc_method_handler`) with the same steps: a call
slot, the request (read and parsed), the chain, the reply written, the end of the call (its
final status handed to the :meth:`~microframe.core.context.RequestContext.on_end` callbacks).
What differs between kinds is only how requests are read (one message, or a stream) and how
replies are written (one message, or a stream).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from time import monotonic, perf_counter
from typing import Any

import grpc
import grpc.aio

from microframe.core.context import RequestContext, _current, cap_exceeded, capped_context
from microframe.core.exceptions import (
    HANDLED_TRAILER,
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    RpcError,
    status_of,
)
from microframe.core.limits import CallLimits, MethodCap
from microframe.core.middleware import Handler, RequestObserver
from microframe.core.router import Route

logger = logging.getLogger("microframe.server")

INTERNAL_MESSAGE = "internal error"
STOPPED_MESSAGE = "the server stopped before the call completed"

__all__ = ["controller_handler", "grpc_method_handler"]


class ResponseTypeError(TypeError):
    """A controller returned something other than the method's response message."""


# ---------------------------------------------------------------------------------------------
# The terminal handler: calling the controller.


def _is_async(controller: Any) -> bool:
    """Tell whether ``controller`` (a function, a method or a callable object) is async."""
    if inspect.iscoroutinefunction(controller) or inspect.isasyncgenfunction(controller):
        return True
    if inspect.isroutine(controller):
        return False
    call = getattr(type(controller), "__call__", None)  # noqa: B004
    return call is not None and (
        inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call)
    )


class _BlockingIterator:
    """A plain iterator over an async one, for ``def`` controllers running in a thread."""

    def __init__(self, stream: AsyncIterator[Any], loop: asyncio.AbstractEventLoop) -> None:
        self._stream = stream
        self._loop = loop

    def __iter__(self) -> Iterator[Any]:
        return self

    async def _next(self) -> Any:
        return await self._stream.__anext__()

    def __next__(self) -> Any:
        try:
            return asyncio.run_coroutine_threadsafe(self._next(), self._loop).result()
        except StopAsyncIteration:
            raise StopIteration from None


_DONE = object()


def _next_or_done(iterator: Iterator[Any]) -> Any:
    return next(iterator, _DONE)


async def _iterate_in_thread(
    iterable: Iterable[Any], executor: Executor, context: contextvars.Context
) -> AsyncIterator[Any]:
    loop = asyncio.get_running_loop()
    iterator = iter(iterable)
    while True:
        item = await loop.run_in_executor(executor, context.run, _next_or_done, iterator)
        if item is _DONE:
            return
        yield item


async def _as_async_iter(result: Any) -> AsyncIterator[Any]:
    for item in result:
        yield item


def _type_error(route: Route, value: Any) -> ResponseTypeError:
    return ResponseTypeError(
        f"{route.full_method} returned {type(value).__module__}.{type(value).__qualname__}, "
        f"expected {route.response_class.DESCRIPTOR.full_name}"
    )


async def _checked_stream(route: Route, stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
    cls = route.response_class
    async for message in stream:
        if message.__class__ is not cls:
            raise _type_error(route, message)
        yield message


def controller_handler(route: Route, executor: Executor) -> Handler:
    """Return the innermost handler of ``route``: call its controller, check what it returns.

    ``async def`` controllers (and async generators) run on the event loop; plain ``def`` ones
    (and plain generators) run in ``executor``, with the caller's context variables.

    A method of one reply with a time cap (``route.timeout``, from ``GRPC["METHOD_TIMEOUTS"]``)
    has its controller run within what is left of the cap (:func:`_within_cap`), inside every
    middleware: they see the call fail with DEADLINE_EXCEEDED. The replies of a server stream
    are produced as the method handler writes them: :func:`grpc_method_handler` caps those.
    """
    terminal = _controller_handler(route, executor)
    if route.timeout is None or route.kind.server_streaming:
        return terminal
    return _within_cap(route, terminal)


def _exceeded(ctx: RequestContext) -> RpcError:
    """The answer of a call past its method's cap, logged."""
    ctx.logger.warning(
        '%s from %s ran past its %g s limit (GRPC["METHOD_TIMEOUTS"]): answered '
        "DEADLINE_EXCEEDED",
        ctx.full_method, ctx.peer, ctx.route.timeout,
    )
    return cap_exceeded(ctx.route)


def _within_cap(route: Route, terminal: Handler) -> Handler:
    """``terminal``, run within what is left of ``route.timeout`` since the call reached the
    framework: past it an ``async def`` controller is cancelled (by the method's
    :class:`~microframe.core.limits.MethodCap`), a plain ``def`` one's thread left to finish
    and its result discarded (a thread cannot be stopped), and the call fails with
    DEADLINE_EXCEEDED."""
    seconds: float = route.timeout  # type: ignore[assignment]
    cap = MethodCap(seconds)
    follow, forget, expired = cap.follow, cap.forget, cap.expired
    current_task = asyncio.current_task

    async def within_cap(ctx: RequestContext, request: Any) -> Any:
        limit = ctx.start + seconds
        if limit <= perf_counter():  # the middleware took it all: the controller never starts
            raise _exceeded(ctx)
        task: asyncio.Task[Any] = current_task()  # type: ignore[assignment]
        follow(task, limit)
        try:
            return await terminal(ctx, request)
        except asyncio.CancelledError:
            if not expired(task):
                raise
            raise _exceeded(ctx) from None
        finally:
            forget(task)

    return within_cap


def _controller_handler(route: Route, executor: Executor) -> Handler:
    controller = route.controller
    cls = route.response_class
    is_async = _is_async(controller)

    if not route.kind.server_streaming:
        if is_async:

            async def unary_response(ctx: RequestContext, request: Any) -> Any:
                response = await controller(ctx, request)
                if response.__class__ is not cls:
                    raise _type_error(route, response)
                return response

            return unary_response

        async def unary_response_in_thread(ctx: RequestContext, request: Any) -> Any:
            loop = asyncio.get_running_loop()
            if route.kind.client_streaming:
                request = _BlockingIterator(request, loop)
            context = contextvars.copy_context()
            response = await loop.run_in_executor(
                executor, context.run, controller, ctx, request
            )
            if response.__class__ is not cls:
                raise _type_error(route, response)
            return response

        return unary_response_in_thread

    if is_async:

        async def stream_response(ctx: RequestContext, request: Any) -> AsyncIterator[Any]:
            result = controller(ctx, request)
            if inspect.isawaitable(result):
                result = await result
            if not hasattr(result, "__aiter__"):
                if not hasattr(result, "__iter__"):
                    raise _type_error(route, result)
                result = _as_async_iter(result)
            return _checked_stream(route, result)

        return stream_response

    async def stream_response_in_thread(
        ctx: RequestContext, request: Any
    ) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        if route.kind.client_streaming:
            request = _BlockingIterator(request, loop)
        context = contextvars.copy_context()
        result = await loop.run_in_executor(executor, context.run, controller, ctx, request)
        if not hasattr(result, "__iter__") or isinstance(result, (str, bytes)):
            raise _type_error(route, result)
        return _checked_stream(route, _iterate_in_thread(result, executor, context))

    return stream_response_in_thread


# ---------------------------------------------------------------------------------------------
# The grpc-facing behaviours: context, parsing, serialization, errors -> status codes.


async def _abort(ctx: RequestContext, exc: BaseException) -> None:
    context = ctx.grpc
    if isinstance(exc, RpcError):
        # The mark tells clients the call reached a handler (an UNAVAILABLE answered here is
        # not retried as one that never got in would be).
        context.set_trailing_metadata((*exc.wire_trailers(), HANDLED_TRAILER))
        await context.abort(exc.code, exc.message)
    ctx.logger.error(
        "%s failed: %s: %s",
        ctx.full_method,
        type(exc).__name__,
        exc,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


def _malformed(ctx: RequestContext, exc: Exception) -> InvalidArgument:
    """The answer to a request message that cannot be parsed (``exc`` says why), logged."""
    name = ctx.route.request_class.DESCRIPTOR.full_name
    ctx.logger.warning("%s: malformed %s from %s: %s", ctx.full_method, name, ctx.peer, exc)
    return InvalidArgument(f"malformed request: cannot parse {name}")


def _missing(ctx: RequestContext) -> InvalidArgument:
    """The answer to a request stream that ended before its one message, logged."""
    ctx.logger.warning(
        "%s: the request from %s ended before one complete message arrived",
        ctx.full_method,
        ctx.peer,
    )
    return InvalidArgument("malformed request: missing or truncated request message")


async def _refuse(ctx: RequestContext, exc: RpcError) -> None:
    """Answer a call refused before its handler ran (no handled mark: retrying it is safe)."""
    trailers = exc.wire_trailers()
    if trailers:
        ctx.grpc.set_trailing_metadata(trailers)
    await ctx.grpc.abort(exc.code, exc.message)


async def _cut(ctx: RequestContext, handled: bool) -> None:
    """Answer a call still running when a stop's grace period ended (see ``Server.stop``).

    A call whose handler ran is answered UNAVAILABLE *with* the handled mark: it may have done
    its work, so a client must not run it again elsewhere. One cut before its handler ran is
    answered without it, and is retried safely.
    """
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    ctx.logger.warning("%s from %s was cut: %s", ctx.full_method, ctx.peer, STOPPED_MESSAGE)
    if handled:
        ctx.grpc.set_trailing_metadata((HANDLED_TRAILER,))
    await ctx.grpc.abort(grpc.StatusCode.UNAVAILABLE, STOPPED_MESSAGE)


#: How a method reads its request: ``read(ctx, task, first)`` (``first``: what the transport
#: passed the handler) returns what the chain is called with.
Read = Callable[[RequestContext, "asyncio.Task[Any]", Any], Awaitable[Any]]
#: How a method writes its reply: ``write(ctx, request, task)`` runs the chain on ``request``,
#: writes what it answers and ends the call; it returns what grpc sends (a unary reply's bytes).
Write = Callable[[RequestContext, Any, "asyncio.Task[Any]"], Awaitable[Any]]


def grpc_method_handler(
    route: Route,
    chain: Handler,
    limits: CallLimits | None = None,
    observers: Sequence[RequestObserver] = (),
    *,
    request_given: bool = False,
    context_class: type[RequestContext] = RequestContext,
    taken: Callable[[RequestContext, bytes], None] | None = None,
) -> grpc.RpcMethodHandler:
    """Return the grpc method handler serving ``route`` through ``chain`` within ``limits``;
    each call's context is a ``context_class`` (the transport's, see
    :mod:`microframe.core.transport`).

    With ``request_given`` (the native transport, for a method taking one request message)
    the method is registered unary: the transport hands the request message over whole, as
    bytes, and it is parsed here as a message read is; the rest is the same.

    ``taken(ctx, message)``, when given, is told of every request message (its bytes) before
    it is parsed: the native transport's connection guard counts them
    (:mod:`microframe.core.connection_guard`).

    Every method is registered with grpc as request-*streaming* and reads its messages itself
    with ``context.read()``:

    - grpc's own unary path takes a request stream that ends before a complete message (a
      truncated frame, or no message at all) for a cancelled call and never answers it,
      leaving the client waiting for its deadline (or forever); here that call is answered
      INVALID_ARGUMENT at once;
    - each read holds a receive slot and has a time limit (:mod:`microframe.core.limits`):
      grpc buffers a message in full once the application waits for it, so the slots bound
      that memory, and the limit frees a slot a client stopped sending on;
    - ``read()`` rather than iterating the request stream: the async generator behind the
      iterator measurably lengthens the latency tail (bench/run.py, one call at a time: p99
      +0.25 ms), ``read()`` costs what grpc's unary path costs.

    Replies of server streams are written with ``context.write()`` under ``SEND_TIMEOUT``: a
    client that stops reading (its flow-control window stays shut) loses the call, and the
    server its slot, instead of the two waiting forever.

    Every kind runs the same loop (``serve`` below): a call slot, ``read`` (the request
    message parsed, or the stream of them parsed as they come), the request context made
    current, ``write`` (the chain, the reply written, the end of the call: the final status
    worked out once and handed to ``ctx.on_end`` callbacks). The kind picks ``read`` and
    ``write``; a unary call runs two framework frames around the chain (``serve``,
    ``answer``), and the terminal handler's.

    A call whose one request message cannot be read ends before the chain; ``observers``
    (the chain's :class:`~microframe.core.middleware.RequestObserver` middleware, see
    :func:`~microframe.core.middleware.build_chain`) are told, innermost first, so that
    they count, log and trace it as they do a streaming call whose request fails in the chain.
    """
    limits = limits if limits is not None else CallLimits.default()
    parse = route.request_class.FromString
    kind = route.kind
    AbortError = grpc.aio.AbortError
    CancelledError = asyncio.CancelledError
    current_task = asyncio.current_task
    EOF = grpc.aio.EOF
    calls, watchdog = limits.calls, limits.watchdog
    receive_timeout = limits.receive_timeout
    idle_timeout = limits.stream_idle_timeout
    send_timeout = limits.send_timeout
    max_reply = limits.max_reply_bytes

    def _too_large(size: int) -> ResourceExhausted:
        # As grpc words it: its own send limit is kept higher, for reflection's descriptors.
        return ResourceExhausted(f"Sent message larger than max ({size} vs. {max_reply})")
    busy = grpc.StatusCode.RESOURCE_EXHAUSTED
    stopping = grpc.StatusCode.UNAVAILABLE
    OK = grpc.StatusCode.OK
    CANCELLED = grpc.StatusCode.CANCELLED
    inf = float("inf")
    told = tuple(reversed(observers))

    def rebind(new_chain: Handler, new_observers: Sequence[RequestObserver]) -> None:
        """Serve the calls that start from now on through ``new_chain`` (settings reloaded:
        :meth:`Server.rebuild_chains <microframe.core.server.Server.rebuild_chains>`); the
        calls in flight finish on the chain they started with. Rebinding the closure's cells
        costs the calls nothing: they read ``chain`` as they always did."""
        nonlocal chain, told
        chain, told = new_chain, tuple(reversed(new_observers))

    def unread(ctx: RequestContext, code: grpc.StatusCode, exc: BaseException) -> None:
        for observer in told:
            try:
                observer.request_failed(ctx, code, exc)
            except Exception:
                ctx.logger.exception("%s: %r failed", ctx.full_method, observer)

    async def receive(ctx: RequestContext, later: bool) -> Any:
        """The next request message (bytes, or EOF), within its time limit; one still
        arriving after QUICK seconds needs a receive slot (microframe.core.limits).

        The task followed is the one waiting here: a controller may read its request stream
        from a task (or, for a plain ``def``, a thread) of its own."""
        timeout = idle_timeout if later else receive_timeout
        now = monotonic()
        task = current_task()
        limit = now + timeout if timeout is not None else inf
        watchdog.receiving(task, now, limit, ctx.peer, later)
        try:
            return await ctx.grpc.read()
        except CancelledError:
            no_slot = watchdog.expired(task)
            if no_slot is None:
                raise
            if no_slot:
                ctx.logger.warning(
                    "%s: no receive slot for a message still arriving from %s",
                    ctx.full_method,
                    ctx.peer,
                )
                raise ResourceExhausted(
                    "the server is receiving as many request messages as it may at once; "
                    "try again later"
                ) from None
            what = "the next request message" if later else "the request message"
            ctx.logger.warning(
                "%s: %s from %s did not arrive within %g s", ctx.full_method, what, ctx.peer,
                timeout,
            )
            raise DeadlineExceeded(f"{what} did not arrive within {timeout:g} s") from None
        finally:
            watchdog.received(task)

    # -- Reading: one request message, or a stream of them. ---------------------------------

    async def one_request(ctx: RequestContext, task: asyncio.Task[Any], _: Any) -> Any:
        """The request message, parsed; a call without one is answered here, before the
        chain (refused, INVALID_ARGUMENT, or cut by a stop)."""
        try:
            raw = await receive(ctx, False)
        except RpcError as exc:
            unread(ctx, exc.code, exc)
            await _refuse(ctx, exc)
        except CancelledError as exc:
            unread(ctx, CANCELLED, exc)
            if calls.cutting:
                await _cut(ctx, handled=False)
            raise
        if raw is EOF:
            refusal = _missing(ctx)
        else:
            # Parsed here, not through given(): a coroutine less on every call (about 1 µs,
            # bench/overhead.py).
            try:
                return parse(raw)
            except Exception as exc:
                refusal = _malformed(ctx, exc)
        unread(ctx, refusal.code, refusal)
        await _refuse(ctx, refusal)

    async def given(ctx: RequestContext, task: asyncio.Task[Any], raw: Any) -> Any:
        """The request message the transport handed over (bytes), parsed."""
        if taken is not None:
            taken(ctx, raw)
        try:
            return parse(raw)
        except Exception as exc:
            refusal = _malformed(ctx, exc)
        unread(ctx, refusal.code, refusal)
        await _refuse(ctx, refusal)

    async def requests(ctx: RequestContext) -> AsyncIterator[Any]:
        later = False
        while True:
            raw = await receive(ctx, later)
            if raw is EOF:
                return
            later = True
            if taken is not None:
                taken(ctx, raw)
            try:
                message = parse(raw)
            except Exception as exc:
                raise _malformed(ctx, exc) from exc
            yield message

    async def request_stream(ctx: RequestContext, task: asyncio.Task[Any], _: Any) -> Any:
        """The request stream: its messages are read and parsed as the controller asks."""
        return requests(ctx)

    # -- Writing: one reply, or a stream of them; then the end of the call. -----------------

    async def answer(ctx: RequestContext, request: Any, task: asyncio.Task[Any]) -> Any:
        """The one reply of ``request`` (a message, or a stream of them), serialized; grpc
        writes it when this returns."""
        try:
            data = (await chain(ctx, request)).SerializeToString()
            if len(data) > max_reply:
                raise _too_large(len(data))
        except AbortError as exc:
            if ctx._ends is not None:
                ctx._ended(status_of(exc, ctx.grpc), exc)
            raise
        except CancelledError as exc:
            if ctx._ends is not None:
                ctx._ended(CANCELLED, exc)
            if calls.cutting:
                await _cut(ctx, handled=True)
            raise
        except Exception as exc:
            if ctx._ends is not None:
                ctx._ended(status_of(exc), exc)
            await _abort(ctx, exc)
        if ctx._ends is not None:
            ctx._ended(OK, None)
        return data

    async def send_all(ctx: RequestContext, request: Any, task: asyncio.Task[Any]) -> None:
        """Write every reply of the stream the chain answers ``request`` with."""
        context = ctx.grpc
        responses = None
        code, error = OK, None  # type: grpc.StatusCode, BaseException | None
        try:
            responses = await chain(ctx, request)
            async for response in responses:
                data = response.SerializeToString()
                if len(data) > max_reply:
                    raise _too_large(len(data))
                watchdog.sending(task, monotonic() + send_timeout)
                try:
                    await context.write(data)
                except (AbortError, CancelledError):
                    raise
                except Exception:
                    if context.cancelled() or context.done():  # the caller went away
                        raise CancelledError() from None
                    raise
                finally:
                    watchdog.sent(task)
        except AbortError as exc:
            code, error = status_of(exc, context), exc
            raise
        except CancelledError as exc:
            code, error = CANCELLED, exc
            if watchdog.expired(task) is not None:
                # The client stopped reading: no status can reach it (it would queue behind
                # the reply), so the call is dropped; grpc resets the stream when it can.
                ctx.logger.warning(
                    "%s: %s read no reply for %g s; the call is dropped",
                    ctx.full_method, ctx.peer, send_timeout,
                )
                if responses is not None:
                    await responses.aclose()
                raise CancelledError() from None
            if calls.cutting:
                await _cut(ctx, handled=True)
            raise
        except Exception as exc:
            code, error = status_of(exc), exc
            await _abort(ctx, exc)
        finally:
            ctx._ended(code, error)

    async def send_within(ctx: RequestContext, request: Any, task: asyncio.Task[Any]) -> None:
        """:func:`send_all` within what is left of the method's cap: past it the stream (an
        ``async def`` controller) is cancelled, the call answered DEADLINE_EXCEEDED and its
        end told as such (the capped context translates the cancellation, see
        :func:`~microframe.core.context.capped_context`)."""
        ctx._cap = cap  # type: ignore[attr-defined]
        follow(task, ctx.start + seconds)  # type: ignore[operator]
        try:
            await send_all(ctx, request, task)
        except CancelledError:
            if not expired(task):
                raise
            await _abort(ctx, _exceeded(ctx))
        finally:
            forget(task)

    seconds = route.timeout
    if seconds is not None:
        # Decided here, once: the methods without a cap run none of this.
        context_class = capped_context(context_class)
        cap = MethodCap(seconds)
        follow, forget, expired = cap.follow, cap.forget, cap.expired
    write: Write = (
        (send_all if seconds is None else send_within) if kind.server_streaming else answer
    )

    given_request = request_given and not kind.client_streaming
    read: Read = (
        given if given_request else request_stream if kind.client_streaming else one_request
    )

    async def serve(first: Any, context: grpc.aio.ServicerContext) -> Any:
        """``first``: the request stream (read with ``context.read()``), or the request
        message's bytes when the transport hands it over (``request_given``)."""
        ctx = context_class(route, context)
        peer = ctx.peer
        task = current_task()
        refused = calls.enter(peer, task)
        if refused is not None:
            await context.abort(stopping if calls.closing else busy, refused)
        try:
            _current.set(ctx)
            return await write(ctx, await read(ctx, task, first), task)
        finally:
            calls.leave(peer, task)

    serve.rebind = rebind  # type: ignore[attr-defined]
    if given_request:
        if kind.server_streaming:
            return grpc.unary_stream_rpc_method_handler(serve)
        return grpc.unary_unary_rpc_method_handler(serve)
    if kind.server_streaming:
        return grpc.stream_stream_rpc_method_handler(serve)
    return grpc.stream_unary_rpc_method_handler(serve)


def rebinder(
    handler: grpc.RpcMethodHandler,
) -> Callable[[Handler, Sequence[RequestObserver]], None] | None:
    """The function that gives a handler made by :func:`grpc_method_handler` a new chain
    (None for any other handler)."""
    serve = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary
        or handler.stream_stream
    )
    return getattr(serve, "rebind", None)
